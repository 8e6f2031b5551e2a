// Phrasal verbs: a past participle followed by a particle.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct UserLoggedIn;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct CartCheckedOut;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ItemsSetAside;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ShipmentHeldBack;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct PaymentCarriedOut;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "account_signed_up")]
struct SignedUp;

fn main() {}
