//! Shared helpers of the integration tests: real databases, one fresh database per test.
//!
//! PostgreSQL and MariaDB are the project's real services (see DESIGN.md); their URLs can be
//! overridden with `OUTBOX_TEST_POSTGRES_URL` and `OUTBOX_TEST_MARIADB_URL` (a server URL whose
//! database is used only to create the per-test databases). A test that cannot reach its service
//! fails under CI (`CI=true`) and is skipped with a printed reason elsewhere.

pub mod broker;
pub mod counters;
pub mod documents;
pub mod fixtures;
pub mod log;
pub mod reader;
pub mod recorder;

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Once;
use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

/// The databases the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite, a file per test.
    Sqlite,
    /// PostgreSQL at 127.0.0.1:5432.
    Postgres,
    /// MariaDB at 127.0.0.1:3306.
    MariaDb,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::MariaDb];

    fn server_url(self) -> String {
        match self {
            Backend::Sqlite => String::new(),
            Backend::Postgres => std::env::var("OUTBOX_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
            Backend::MariaDb => std::env::var("OUTBOX_TEST_MARIADB_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned()),
        }
    }
}

/// A fresh database with the outbox tables, for one test.
#[derive(Debug)]
pub struct TestDb {
    /// A pooled connection.
    pub db: DatabaseConnection,
    /// Which backend.
    pub backend: Backend,
    /// Its URL, for opening more connections (a relay in another process, say).
    pub url: String,
}

impl TestDb {
    /// Opens another, independent pool on the same database.
    pub async fn connect_again(&self) -> DatabaseConnection {
        connect(&self.url, 10)
            .await
            .unwrap_or_else(|e| panic!("reconnect to {}: {e}", self.url))
    }
}

/// Whether this run is CI, where an unreachable service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Installs a `tracing` subscriber once (`RUST_LOG` filters it).
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Reports an unreachable service: panics under CI, prints and returns `None` elsewhere.
pub fn unavailable<T>(what: &str, error: &dyn std::fmt::Display) -> Option<T> {
    if in_ci() {
        panic!(
            "{what} is not reachable and CI=true, so this test fails instead of skipping: {error}"
        );
    }
    eprintln!("SKIPPED: {what} is not reachable ({error}); set it up or run under CI=true to fail");
    None
}

/// The shared Kafka broker (`OUTBOX_TEST_KAFKA_BROKERS`, default `127.0.0.1:9092`), or `None` (after printing why) when it is unreachable outside CI.
pub fn kafka_brokers() -> Option<String> {
    let brokers = std::env::var("OUTBOX_TEST_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let first = brokers.split(',').next().unwrap_or_default().trim();
    let reachable = first
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_owned()))
        .and_then(|addr| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())
        });
    match reachable {
        Ok(_) => Some(brokers),
        Err(e) => unavailable(
            &format!("Kafka broker at {brokers} (scripts/tansu.sh start)"),
            &e,
        ),
    }
}

/// The RabbitMQ server (`OUTBOX_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`),
/// or `None` (after printing why) when it is unreachable outside CI.
pub fn rabbitmq_uri() -> Option<String> {
    let uri = std::env::var("OUTBOX_TEST_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let host = uri
        .split_once("://")
        .map_or(uri.as_str(), |(_, rest)| rest)
        .rsplit_once('@')
        .map_or_else(
            || uri.split_once("://").map_or(uri.as_str(), |(_, rest)| rest),
            |(_, host)| host,
        )
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let reachable = host
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_owned()))
        .and_then(|addr| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())
        });
    match reachable {
        Ok(_) => Some(uri),
        Err(e) => unavailable(&format!("RabbitMQ at {host}"), &e),
    }
}

async fn connect(url: &str, max: u32) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    Database::connect(opts).await
}

/// A database name unique to `test` and `backend`, valid on every backend (max 63 bytes).
pub fn database_name(test: &str, backend: Backend) -> String {
    let mut hash: u32 = 2_166_136_261;
    for b in test.bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    let tail: String = test
        .rsplit("::")
        .next()
        .unwrap_or(test)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(36)
        .collect();
    let b = match backend {
        Backend::Sqlite => "lite",
        Backend::Postgres => "pg",
        Backend::MariaDb => "my",
    };
    format!("obx_{b}_{tail}_{hash:08x}")
}

/// Drops the replication slots an earlier run of a log relay test left on database `name`
/// (a database with a slot cannot be dropped), ending the sessions that still hold them.
async fn drop_slots_of(admin: &DatabaseConnection, name: &str) {
    let sql = format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE database = '{name}' AND active_pid IS NOT NULL"
    );
    let _ = admin
        .execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await;
    let sql = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE database = '{name}' AND NOT active"
    );
    for _ in 0..50 {
        if admin
            .execute_raw(Statement::from_string(DbBackend::Postgres, sql.clone()))
            .await
            .is_ok()
        {
            let left = format!("SELECT 1 FROM pg_replication_slots WHERE database = '{name}'");
            if let Ok(None) = admin
                .query_one_raw(Statement::from_string(DbBackend::Postgres, left))
                .await
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates an empty database named after `test` on `backend` and applies the outbox migrations.
///
/// Returns `None` (after printing why) when the server is unreachable outside CI.
pub async fn fresh(backend: Backend, test: &str) -> Option<TestDb> {
    init_tracing();
    let name = database_name(test, backend);
    let url = match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("outbox-tests");
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(format!("{name}.sqlite"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite://{}?mode=rwc", path.display())
        }
        Backend::Postgres | Backend::MariaDb => {
            let server = backend.server_url();
            let admin = match connect(&server, 1).await {
                Ok(db) => db,
                Err(e) => return unavailable(&format!("{backend:?} at {server}"), &e),
            };
            let (drop, create) = match backend {
                Backend::Postgres => (
                    format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                    format!("CREATE DATABASE \"{name}\""),
                ),
                _ => (
                    format!("DROP DATABASE IF EXISTS `{name}`"),
                    format!("CREATE DATABASE `{name}`"),
                ),
            };
            let db_backend = admin.get_database_backend();
            if backend == Backend::Postgres {
                drop_slots_of(&admin, &name).await;
            }
            admin
                .execute_raw(Statement::from_string(db_backend, drop))
                .await
                .expect("drop test database");
            admin
                .execute_raw(Statement::from_string(db_backend, create))
                .await
                .expect("create test database");
            let _ = admin.close().await;
            match server.rsplit_once('/') {
                Some((base, _)) => format!("{base}/{name}"),
                None => panic!("server URL {server} has no database part"),
            }
        }
    };
    let db = connect(&url, 10)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    if backend == Backend::Sqlite {
        for pragma in ["PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=10000"] {
            db.execute_raw(Statement::from_string(DbBackend::Sqlite, pragma))
                .await
                .expect("sqlite pragma");
        }
    }
    outbox_seaorm::schema::migrate(&db)
        .await
        .expect("outbox migrations");
    Some(TestDb { db, backend, url })
}

/// Defines one test per backend for each named async function taking a [`TestDb`]:
/// `db_tests!(saves_atomically)` makes `saves_atomically::sqlite`, `::postgres` and `::mariadb`.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let test = concat!(module_path!(), "::", stringify!($name));
                if let Some(db) = $crate::fresh($crate::Backend::Sqlite, test).await {
                    super::$name(db).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let test = concat!(module_path!(), "::", stringify!($name));
                if let Some(db) = $crate::fresh($crate::Backend::Postgres, test).await {
                    super::$name(db).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                let test = concat!(module_path!(), "::", stringify!($name));
                if let Some(db) = $crate::fresh($crate::Backend::MariaDb, test).await {
                    super::$name(db).await;
                }
            }
        }
    )*};
}

/// A relay (table or log) running in its own task until [`Running::stop`]: the start and stop
/// every relay test needs.
#[derive(Debug)]
pub struct Running<T> {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<T>,
}

/// A table relay running in its own task.
pub type RunningRelay = Running<outbox_seaorm::RelayStats>;

impl<T: Send + 'static> Running<T> {
    /// Spawns `run`, handing it a future that completes when [`Running::stop`] is called.
    pub fn spawn<Fut>(run: impl FnOnce(Stop) -> Fut) -> Running<T>
    where
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
        Running { stop, task }
    }

    /// Asks the relay to stop and waits (at most 60 s) until it did (its batches in flight
    /// finished).
    pub async fn stop(self) -> T {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the relay stops in time")
            .expect("relay task")
    }
}

impl Running<outbox_seaorm::RelayStats> {
    /// Spawns `relay.run_until(..)`.
    pub fn start(relay: outbox_seaorm::Relay) -> Self {
        Running::spawn(|stop| async move { relay.run_until(stop).await.expect("relay run") })
    }
}

/// The stop signal [`Running::spawn`] hands to its relay: completes when the test stops it.
pub type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
