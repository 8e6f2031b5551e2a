// Irregular participles after a prefix (re-, un-, over-, mis-, with-, up-).
use outbox_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct SettingOverridden;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ChapterRewritten;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ParcelMislaid;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct LoanRepaid;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct ConfigUnset;

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
struct RulingUpheld;

fn main() {}
