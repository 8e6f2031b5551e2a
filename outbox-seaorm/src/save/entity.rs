//! The aggregate's own row: the one statement a save runs on it, and how its outcome reads.
//!
//! An unversioned aggregate is upserted (the last writer wins). A versioned one is inserted when
//! its version is 0 and never overwrites a row that exists; otherwise it is updated (or deleted)
//! only where the stored version is the one it was loaded at, and the update moves the version
//! forward in the same statement.

use std::str::FromStr;

use outbox_core::AggregateRoot;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait,
    IdenStatic, IntoActiveModel, Iterable, ModelTrait, PrimaryKeyToColumn, QueryFilter,
    QueryResult, QuerySelect, QueryTrait, Statement,
};

use super::plan::VersionStep;
use crate::error::Error;

/// The active model of a model type.
pub(crate) type ActiveOf<M> = <<M as ModelTrait>::Entity as EntityTrait>::ActiveModel;

/// What a save does to the aggregate's own row.
pub(crate) enum EntityWrite {
    /// Nothing: the caller writes the row, or there is none.
    None,
    /// Insert, or update every non-key column of the row with the same key.
    Upsert(Statement),
    /// Delete; no row deleted is [`Error::NotFound`].
    Delete(Statement),
    /// A versioned write that changes exactly one row, or none when the stored version is not
    /// the loaded one (or, for an insert, when the row exists).
    Guarded {
        /// The insert, update or delete.
        statement: Statement,
        /// Which of the three.
        kind: Guard,
        /// Reads the stored version, to say what the conflict was.
        read_version: Statement,
    },
}

/// The kind of a versioned write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Guard {
    /// A new aggregate (version 0).
    Insert,
    /// An existing one, at its loaded version.
    Update,
    /// An existing one, deleted at its loaded version.
    Delete,
}

impl EntityWrite {
    /// Whether it deletes the aggregate's row (versioned or not).
    pub(crate) fn is_delete(&self) -> bool {
        matches!(
            self,
            EntityWrite::Delete(_)
                | EntityWrite::Guarded {
                    kind: Guard::Delete,
                    ..
                }
        )
    }

    /// Whether the aggregate's row changes (the version of a versioned one moves).
    pub(crate) fn moves_version(&self) -> bool {
        matches!(
            self,
            EntityWrite::Guarded {
                kind: Guard::Insert | Guard::Update,
                ..
            }
        )
    }
}

/// The write of `model`'s row for a save: an upsert, or for a versioned aggregate an insert or
/// guarded update to `version.next`.
pub(crate) fn save<A>(
    model: &A,
    version: Option<VersionStep>,
    backend: DbBackend,
) -> Result<EntityWrite, Error>
where
    A: AggregateRoot + ModelTrait + IntoActiveModel<ActiveOf<A>>,
    ActiveOf<A>: ActiveModelTrait<Entity = A::Entity>,
{
    let Some(version) = version else {
        return Ok(EntityWrite::Upsert(upsert(model, backend)));
    };
    let column = version_column::<A>()?;
    let read_version = read_version(model, column, backend);
    let mut next = model.clone();
    next.set_version(version.next);
    let keys = keys::<A::Entity>();
    if version.loaded == 0 {
        let mut insert = A::Entity::insert(next.into_active_model());
        if backend != DbBackend::MySql {
            // MySQL has no `DO NOTHING` for one key; its duplicate-key error is read instead.
            insert = insert.on_conflict(OnConflict::columns(keys).do_nothing().to_owned());
        }
        return Ok(EntityWrite::Guarded {
            statement: insert.build(backend),
            kind: Guard::Insert,
            read_version,
        });
    }
    let mut update = A::Entity::update_many();
    for c in <A::Entity as EntityTrait>::Column::iter() {
        if !keys.iter().any(|k| k.as_str() == c.as_str()) {
            update = update.col_expr(c, c.save_as(Expr::val(next.get(c))));
        }
    }
    let statement = update
        .filter(key_condition(model).add(column.eq(model.get(column))))
        .build(backend);
    Ok(EntityWrite::Guarded {
        statement,
        kind: Guard::Update,
        read_version,
    })
}

/// The delete of `model`'s row; for a versioned aggregate, only at its loaded version.
pub(crate) fn delete<A>(model: &A, backend: DbBackend) -> Result<EntityWrite, Error>
where
    A: AggregateRoot + ModelTrait,
{
    let delete = A::Entity::delete_many().filter(key_condition(model));
    if !A::VERSIONED {
        return Ok(EntityWrite::Delete(delete.build(backend)));
    }
    let column = version_column::<A>()?;
    Ok(EntityWrite::Guarded {
        statement: delete.filter(column.eq(model.get(column))).build(backend),
        kind: Guard::Delete,
        read_version: read_version(model, column, backend),
    })
}

/// Inserts `model`'s row, or updates every non-key column of the row with its primary key.
pub(crate) fn upsert<M>(model: &M, backend: DbBackend) -> Statement
where
    M: ModelTrait + IntoActiveModel<ActiveOf<M>>,
    ActiveOf<M>: ActiveModelTrait<Entity = M::Entity>,
{
    let keys = keys::<M::Entity>();
    let others: Vec<_> = <<M::Entity as EntityTrait>::Column as Iterable>::iter()
        .filter(|c| !keys.iter().any(|k| k.as_str() == c.as_str()))
        .collect();
    let mut on_conflict = OnConflict::columns(keys.clone());
    if others.is_empty() {
        on_conflict.do_nothing_on(keys);
    } else {
        on_conflict.update_columns(others);
    }
    M::Entity::insert(model.clone().into_active_model())
        .on_conflict(on_conflict)
        .build(backend)
}

fn keys<E: EntityTrait>() -> Vec<E::Column> {
    <E::PrimaryKey as Iterable>::iter()
        .map(PrimaryKeyToColumn::into_column)
        .collect()
}

/// `key1 = v1 AND key2 = v2 ...` for `model`'s primary key.
fn key_condition<M: ModelTrait>(model: &M) -> Condition {
    keys::<M::Entity>()
        .into_iter()
        .fold(Condition::all(), |all, key| all.add(key.eq(model.get(key))))
}

/// The column of the `#[aggregate(version)]` field.
fn version_column<A>() -> Result<<A::Entity as EntityTrait>::Column, Error>
where
    A: AggregateRoot + ModelTrait,
{
    let field = A::VERSION_FIELD.unwrap_or("version");
    <A::Entity as EntityTrait>::Column::from_str(field).map_err(|_| Error::VersionColumn {
        aggregate_type: A::AGGREGATE_TYPE,
        field,
    })
}

fn read_version<M: ModelTrait>(
    model: &M,
    column: <M::Entity as EntityTrait>::Column,
    backend: DbBackend,
) -> Statement {
    M::Entity::find()
        .select_only()
        .column(column)
        .filter(key_condition(model))
        .build(backend)
}

/// The stored version, `None` when the row does not exist.
pub(crate) async fn stored_version<C: ConnectionTrait>(
    conn: &C,
    read_version: &Statement,
) -> Result<Option<i64>, DbErr> {
    let row = conn.query_one_raw(read_version.clone()).await?;
    Ok(row.map(|row| integer(&row)))
}

/// The first column of `row` as an `i64`, whatever integer type the column has.
fn integer(row: &QueryResult) -> i64 {
    if let Ok(v) = row.try_get_by_index::<i64>(0) {
        return v;
    }
    if let Ok(v) = row.try_get_by_index::<i32>(0) {
        return i64::from(v);
    }
    if let Ok(v) = row.try_get_by_index::<i16>(0) {
        return i64::from(v);
    }
    if let Ok(v) = row.try_get_by_index::<u32>(0) {
        return i64::from(v);
    }
    if let Ok(v) = row.try_get_by_index::<u64>(0) {
        return i64::try_from(v).unwrap_or(i64::MAX);
    }
    -1
}

/// Whether `err` is MySQL's duplicate-key error (1062), which a versioned insert of an id that
/// exists raises there.
#[cfg(feature = "mysql")]
pub(crate) fn is_mysql_duplicate(err: &DbErr) -> bool {
    use std::ops::Deref;
    match err {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => match e.deref() {
            sea_orm::sqlx::Error::Database(db) => db
                .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|my| my.number() == 1062),
            _ => false,
        },
        _ => false,
    }
}

/// Without the MySQL driver no error comes from MySQL.
#[cfg(not(feature = "mysql"))]
pub(crate) fn is_mysql_duplicate(_err: &DbErr) -> bool {
    false
}
