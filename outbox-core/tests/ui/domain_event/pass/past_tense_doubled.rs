// Regular past participles that double the final consonant.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderShipped;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct TimerStopped;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct PaymentSubmitted;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct TransactionCommitted;

fn main() {}
