// Regular past participles of verbs in -y.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct DiscountApplied;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct AccountVerified;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct CustomerNotified;

fn main() {}
