//! The outbox row ↔ envelope codec: the one place that knows which columns hold an envelope and
//! how its fields map to column values and back (metadata as JSON, `NULL` when empty; the version
//! as `i32`; the occurrence time in microseconds; the relay shard derived from the aggregate).
//!
//! The writers (the save path's multi-row insert and PostgreSQL's one-statement save) take the
//! columns from [`columns`] and the values from [`values`]; the readers (the relay's batch, the
//! delivery worker's event lookup) select [`read_columns`] and decode the row with [`Stored`].
//! The columns the table adds around an envelope (position, created_at, status, attempts, ...)
//! are the writers' and readers' own.

use std::num::TryFromIntError;

use outbox_core::{Envelope, EventMetadata};
use sea_orm::sea_query::Iden;
use sea_orm::{DbErr, QueryResult, Value};
use uuid::Uuid;

use crate::error::Error;
use crate::schema::Outbox;
use crate::time::{from_micros, to_micros};

/// How many columns an envelope is written to.
pub(crate) const WRITTEN: usize = 11;

/// How many of them are read back: all but the shard, which is the relay's own.
pub(crate) const READ: usize = WRITTEN - 1;

/// The columns an envelope is written to, in the order of [`values`], each with its PostgreSQL
/// type (for the casts of bound values). The shard comes last: it is not read back.
const COLUMNS: [(Outbox, &str); WRITTEN] = [
    (Outbox::Id, "varchar"),
    (Outbox::AggregateType, "varchar"),
    (Outbox::AggregateId, "varchar"),
    (Outbox::EventType, "varchar"),
    (Outbox::Version, "integer"),
    (Outbox::Sequence, "bigint"),
    (Outbox::Payload, "text"),
    (Outbox::Metadata, "text"),
    (Outbox::Topic, "varchar"),
    (Outbox::OccurredAt, "bigint"),
    (Outbox::Shard, "smallint"),
];

/// The columns an envelope is written to, in the order of [`values`].
pub(crate) fn columns() -> [Outbox; WRITTEN] {
    COLUMNS.map(|(column, _)| column)
}

/// The PostgreSQL type of each of [`columns`], in the same order.
pub(crate) fn pg_types() -> [&'static str; WRITTEN] {
    COLUMNS.map(|(_, ty)| ty)
}

/// The columns an envelope is read back from (what [`Stored::read`] reads).
pub(crate) fn read_columns() -> [Outbox; READ] {
    let mut out = [Outbox::Id; READ];
    for (slot, (column, _)) in out.iter_mut().zip(COLUMNS) {
        *slot = column;
    }
    out
}

/// [`read_columns`] as a select list, each column qualified with `alias` (`"o."`, say, or `""`).
pub(crate) fn select_list(alias: &str) -> String {
    read_columns()
        .iter()
        .map(|column| format!("{alias}{}", column.unquoted()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of `envelope`'s row, in the order of [`columns`].
///
/// # Errors
/// [`Error::Row`] when its metadata does not serialize.
pub(crate) fn values(envelope: &Envelope) -> Result<[Value; WRITTEN], Error> {
    Ok([
        envelope.id().to_string().into(),
        envelope.aggregate_type().into(),
        envelope.aggregate_id().into(),
        envelope.event_name().into(),
        i32::try_from(envelope.event_version())
            .unwrap_or(i32::MAX)
            .into(),
        envelope.sequence().into(),
        envelope.payload().into(),
        metadata_json(envelope)?.into(),
        envelope.topic().map(str::to_owned).into(),
        to_micros(envelope.occurred_at()).into(),
        crate::shard_of(envelope.aggregate_type(), envelope.aggregate_id()).into(),
    ])
}

/// The metadata as stored: JSON, or `None` when there is none.
fn metadata_json(envelope: &Envelope) -> Result<Option<String>, Error> {
    if envelope.metadata().is_empty() {
        return Ok(None);
    }
    serde_json::to_string(envelope.metadata())
        .map(Some)
        .map_err(|source| Error::Row {
            event_id: envelope.id().to_string(),
            source,
        })
}

/// An outbox row's envelope columns, as stored.
pub(crate) struct Stored {
    id: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    version: i32,
    sequence: i64,
    payload: String,
    metadata: Option<String>,
    topic: Option<String>,
    occurred_at: i64,
}

/// Why a stored row does not make an envelope (hand-edited, or written by another tool).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Undecodable {
    /// The id column does not hold a UUID.
    #[error("its id is not a UUID")]
    Id(#[source] uuid::Error),
    /// The version column is negative.
    #[error("its version is negative")]
    Version(#[source] TryFromIntError),
    /// The metadata column does not hold an [`EventMetadata`] as JSON.
    #[error("its metadata is not valid JSON")]
    Metadata(#[source] serde_json::Error),
}

impl Stored {
    /// Reads the [`read_columns`] of `row`, named `prefix` + column (`""` for a plain select).
    ///
    /// # Errors
    /// A column is missing or of another type.
    pub(crate) fn read(row: &QueryResult, prefix: &str) -> Result<Stored, DbErr> {
        // `Iden::unquoted` borrows its column: keep them alive for the reads below.
        let columns = read_columns();
        let [
            id,
            aggregate_type,
            aggregate_id,
            event_type,
            version,
            sequence,
            payload,
            metadata,
            topic,
            occurred_at,
        ] = columns.each_ref().map(Iden::unquoted);
        Ok(Stored {
            id: row.try_get(prefix, id)?,
            aggregate_type: row.try_get(prefix, aggregate_type)?,
            aggregate_id: row.try_get(prefix, aggregate_id)?,
            event_type: row.try_get(prefix, event_type)?,
            version: row.try_get(prefix, version)?,
            sequence: row.try_get(prefix, sequence)?,
            payload: row.try_get(prefix, payload)?,
            metadata: row.try_get(prefix, metadata)?,
            topic: row.try_get(prefix, topic)?,
            occurred_at: row.try_get(prefix, occurred_at)?,
        })
    }

    /// Reads the [`read_columns`] from a row given as text (a logical replication insert):
    /// `column` returns a column's text, `None` for `NULL` or a column the row does not have.
    ///
    /// # Errors
    /// The name of a required column that is missing or does not parse.
    #[cfg(feature = "postgres")]
    pub(crate) fn from_text(
        mut column: impl FnMut(&str) -> Option<String>,
    ) -> Result<Stored, &'static str> {
        let mut text = |name: &'static str| column(name).ok_or(name);
        let id = text("id")?;
        let aggregate_type = text("aggregatetype")?;
        let aggregate_id = text("aggregateid")?;
        let event_type = text("type")?;
        let payload = text("payload")?;
        let mut number = |name: &'static str| -> Result<i64, &'static str> {
            column(name).and_then(|t| t.parse().ok()).ok_or(name)
        };
        let version = i32::try_from(number("version")?).map_err(|_| "version")?;
        let sequence = number("sequence")?;
        let occurred_at = number("occurred_at")?;
        Ok(Stored {
            id,
            aggregate_type,
            aggregate_id,
            event_type,
            version,
            sequence,
            payload,
            metadata: column("metadata"),
            topic: column("topic"),
            occurred_at,
        })
    }

    /// The event id, as stored.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The aggregate's routing name.
    pub(crate) fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    /// The aggregate's id.
    pub(crate) fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    /// The envelope the row holds. Metadata `NULL` (or empty) is no metadata.
    ///
    /// # Errors
    /// [`Undecodable`] when a column's value does not make its envelope field.
    pub(crate) fn envelope(self) -> Result<Envelope, Undecodable> {
        let id = Uuid::parse_str(&self.id).map_err(Undecodable::Id)?;
        let version = u32::try_from(self.version).map_err(Undecodable::Version)?;
        let metadata = match self.metadata.as_deref() {
            None | Some("") => EventMetadata::default(),
            Some(json) => serde_json::from_str(json).map_err(Undecodable::Metadata)?,
        };
        Ok(
            Envelope::builder(self.event_type, self.aggregate_type, self.aggregate_id)
                .id(id)
                .version(version)
                .sequence(self.sequence)
                .occurred_at(from_micros(self.occurred_at))
                .payload(self.payload)
                .metadata(metadata)
                .topic(self.topic)
                .build(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_columns_once() {
        assert_eq!(
            select_list("o."),
            "o.id, o.aggregatetype, o.aggregateid, o.type, o.version, o.sequence, o.payload, \
             o.metadata, o.topic, o.occurred_at"
        );
        assert_eq!(columns()[..READ].len(), read_columns().len());
        assert!(matches!(columns()[READ], Outbox::Shard));
        assert_eq!(pg_types().len(), columns().len());
    }

    #[test]
    fn reads_a_row_given_as_text() {
        // The names `from_text` asks for are the columns' own.
        let names: Vec<String> = read_columns()
            .iter()
            .map(|c| c.unquoted().to_owned())
            .collect();
        let id = Uuid::now_v7().to_string();
        let value = |name: &str| -> Option<String> {
            match name {
                "id" => Some(id.clone()),
                "version" => Some("2".to_owned()),
                "sequence" | "occurred_at" => Some("7".to_owned()),
                "metadata" | "topic" => None,
                other if names.iter().any(|n| n == other) => Some("x".to_owned()),
                _ => None,
            }
        };
        let envelope = Stored::from_text(value).unwrap().envelope().unwrap();
        assert_eq!(envelope.id().to_string(), id);
        assert_eq!((envelope.event_version(), envelope.sequence()), (2, 7));
        assert_eq!(envelope.event_name(), "x");
        assert_eq!(
            Stored::from_text(|name| (name != "sequence").then(|| "1".to_owned())).err(),
            Some("sequence")
        );
    }
}
