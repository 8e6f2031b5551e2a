//! Which relay shard an aggregate's events belong to.

use crate::schema::SHARDS;

/// The shard of aggregate `aggregate_type`/`aggregate_id`, in `0..SHARDS`.
///
/// A stable FNV-1a hash: the same aggregate maps to the same shard in every process and version,
/// because the shard is stored with each outbox row.
///
/// ```
/// let a = outbox_seaorm::shard_of("Order", "42");
/// assert_eq!(a, outbox_seaorm::shard_of("Order", "42"));
/// assert!((0..outbox_seaorm::schema::SHARDS).contains(&a));
/// ```
pub fn shard_of(aggregate_type: &str, aggregate_id: &str) -> i16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let bytes = aggregate_type
        .as_bytes()
        .iter()
        .chain(std::iter::once(&0u8))
        .chain(aggregate_id.as_bytes());
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // SHARDS is a small positive constant, so the remainder fits in i16.
    (hash % SHARDS as u64) as i16
}
