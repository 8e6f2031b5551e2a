use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ItemsShipped;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct StockSold;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct InvoiceSent;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct PasswordReset;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.line.written")]
struct LineWritten;

fn main() {
    assert_eq!(<LineWritten as DomainEvent>::NAME, "order.line.written");
}
