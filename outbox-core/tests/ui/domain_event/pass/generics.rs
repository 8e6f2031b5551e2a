use outbox_core::DomainEvent;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[serde(bound = "T: Serialize + DeserializeOwned")]
#[event(name = "ValueChanged", version = 2)]
struct ValueChanged<T>
where
    T: Clone + std::fmt::Debug + Send + Sync + 'static,
{
    value: T,
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
enum OrderUpdated {
    Lines { count: u32 },
    Address(String),
}

fn main() {
    assert_eq!(<ValueChanged<u8> as DomainEvent>::NAME, "ValueChanged");
    assert_eq!(<ValueChanged<String> as DomainEvent>::VERSION, 2);
    assert_eq!(<OrderUpdated as DomainEvent>::NAME, "OrderUpdated");
}
