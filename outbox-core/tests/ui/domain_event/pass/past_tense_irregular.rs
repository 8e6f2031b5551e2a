// Irregular past participles and simple pasts.
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct InvoicePaid;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct AccountFrozen;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct OptionChosen;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct FundsWithdrawn;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct PriceSet;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct StockPriceRose;

fn main() {}
