// A phrasal verb written as one word, last: `Login` is `logged in`.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct UserLogin {
    id: u64,
}

fn main() {}
