use outbox_core::{DomainEvent, Envelope};
use serde::{Deserialize, Serialize};

// Version 1: one `name` field.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CustomerRegistered", version = 1)]
struct CustomerRegisteredV1 {
    name: String,
}

// Version 2: the name split in two.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CustomerRegistered", version = 2, upcast_from = CustomerRegisteredV1)]
struct CustomerRegisteredV2 {
    first: String,
    last: String,
}

impl From<CustomerRegisteredV1> for CustomerRegisteredV2 {
    fn from(v1: CustomerRegisteredV1) -> Self {
        let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
        CustomerRegisteredV2 { first: first.to_owned(), last: last.to_owned() }
    }
}

// Version 3: a field added.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "CustomerRegistered", version = 3, upcast_from = CustomerRegisteredV2)]
struct CustomerRegistered {
    first: String,
    last: String,
    country: Option<String>,
}

impl From<CustomerRegisteredV2> for CustomerRegistered {
    fn from(v2: CustomerRegisteredV2) -> Self {
        CustomerRegistered { first: v2.first, last: v2.last, country: None }
    }
}

fn envelope(version: u32, payload: &str) -> Envelope {
    Envelope::builder("CustomerRegistered", "Customer", "c-1")
        .version(version)
        .payload(payload)
        .build()
}

fn main() {
    assert_eq!(CustomerRegistered::OLDEST_VERSION, 1);
    assert_eq!(CustomerRegisteredV2::OLDEST_VERSION, 1);
    assert_eq!(CustomerRegisteredV1::OLDEST_VERSION, 1);

    let v1 = envelope(1, r#"{"name":"Ada Lovelace"}"#).decode::<CustomerRegistered>().unwrap();
    assert_eq!((v1.first.as_str(), v1.last.as_str(), v1.country), ("Ada", "Lovelace", None));

    let v3 = envelope(3, r#"{"first":"Ada","last":"L","country":"UK"}"#)
        .decode::<CustomerRegistered>()
        .unwrap();
    assert_eq!(v3.country.as_deref(), Some("UK"));

    // A type never reads a version newer than its own.
    assert!(envelope(3, "{}").decode::<CustomerRegisteredV2>().is_err());
}
