// A past participle followed by a short phrase that opens with a preposition.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OrderPaidInFull;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct FundsTransferredToSavings;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct EmailSentToCustomer;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.marked.as.paid")]
struct MarkedPaid;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct PaymentCompletedSuccessfully;

fn main() {}
