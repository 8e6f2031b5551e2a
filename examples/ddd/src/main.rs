//! The DDD example: an order service, a payment service and an inventory service, each with its
//! own database and its own outbox, talking only through Kafka or RabbitMQ (a choreographed
//! saga).
//!
//! ```text
//! cargo run --release -p ddd                      # embedded: SQLite files + mock Kafka cluster
//! cargo run --release -p ddd -- --orders 2000     # a progress bar, then the summary
//! cargo run --release -p ddd -- --chaos           # kill/restart relays and consumers, duplicates
//! cargo run --release -p ddd -- --database-url postgres://postgres@127.0.0.1:5432/test \
//!                               --brokers 127.0.0.1:9092
//! cargo run --release -p ddd -- --broker amqp://guest:guest@127.0.0.1:5672/%2f --chaos
//! ```
//!
//! `order.rs`, `payment.rs` and `inventory.rs` hold each service's aggregate, events and
//! handlers; `runtime.rs` the wiring; `rabbit.rs` the RabbitMQ side; `report.rs` what is
//! printed. The run ends with self-checks against the databases and exits non-zero when one
//! fails.

// A binary: its modules are written like a service's own crate, with `pub` items.
#![allow(unreachable_pub)]

mod inventory;
mod order;
mod payment;
mod rabbit;
mod report;
mod runtime;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use outbox_core::HandlerRegistry;
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::sync::watch;

use rabbit::Rabbit;
use report::{Check, Counters};
use runtime::{BoxError, Kafka, Service, Store, Wire, count};

/// Order, payment and inventory services over Kafka or RabbitMQ, each with its own database and
/// outbox.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// How many orders to place.
    #[arg(long, env = "DDD_ORDERS", default_value_t = 20)]
    orders: usize,
    /// A PostgreSQL or MariaDB server URL (`postgres://postgres@127.0.0.1:5432/test`); the example
    /// drops and creates one database per service on it (`ddd_order`, `ddd_payment`,
    /// `ddd_inventory`). Default: SQLite files in `--data-dir`.
    #[arg(long, env = "DDD_DATABASE_URL")]
    database_url: Option<String>,
    /// A Kafka broker (`127.0.0.1:9092`). Default: librdkafka's in-process mock cluster.
    #[arg(long, env = "DDD_BROKERS")]
    brokers: Option<String>,
    /// The broker: an AMQP URL (`amqp://guest:guest@127.0.0.1:5672/%2f`) runs the services over
    /// RabbitMQ (an exchange and queues named after the run, deleted at the end); anything else
    /// is a Kafka broker, as `--brokers`. Default: librdkafka's in-process mock cluster.
    #[arg(long, env = "DDD_BROKER", conflicts_with = "brokers")]
    broker: Option<String>,
    /// Run the order service as two instances (concurrent replies to one order), kill and
    /// restart the relays and a service's consumers mid-run, inject duplicate deliveries, and
    /// place a few orders through an instance not upgraded yet (`OrderCreated` version 1).
    #[arg(long, env = "DDD_CHAOS")]
    chaos: bool,
    /// Seed of the generated orders (default: random); the same seed gives the same orders.
    #[arg(long, env = "DDD_SEED")]
    seed: Option<u64>,
    /// Print only the summary and the checks.
    #[arg(long, short)]
    quiet: bool,
    /// Where the embedded SQLite files go (recreated per run).
    #[arg(long, env = "DDD_DATA_DIR", default_value = "target/ddd-data")]
    data_dir: PathBuf,
    /// How long to wait for every order to reach a final state.
    #[arg(long, env = "DDD_TIMEOUT_SECS", default_value_t = 120)]
    timeout_secs: u64,
}

/// An order to place, and what the rules say must become of it.
struct Planned {
    customer: &'static str,
    amount_cents: i64,
    sku: &'static str,
    quantity: i32,
}

impl Planned {
    fn declined(&self) -> bool {
        payment::LIMITS
            .iter()
            .find(|(c, _)| *c == self.customer)
            .is_none_or(|(_, limit)| self.amount_cents > *limit)
    }
    fn rejected(&self) -> bool {
        self.sku == inventory::SOLD_OUT
    }
    /// Cancelled with its payment captured: the payment service refunds it.
    fn refunded(&self) -> bool {
        self.rejected() && !self.declined()
    }
    /// Cancelled with its items reserved: the inventory service puts them back.
    fn released(&self) -> bool {
        self.declined() && !self.rejected()
    }
}

/// How many orders after each chaos round an order-service instance not upgraded yet places
/// (`OrderCreated` version 1, read as version 2 by the consumers through its upcast).
const V1_PER_ROUND: usize = 2;

fn plan(orders: usize, seed: u64) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..orders)
        .map(|_| Planned {
            customer: payment::LIMITS[rng.usize(..payment::LIMITS.len())].0,
            amount_cents: rng.i64(100..=12_000),
            sku: inventory::SKUS[rng.usize(..inventory::SKUS.len())],
            quantity: rng.i32(1..=3),
        })
        .collect()
}

/// How many orders' flows are printed.
const FOLLOWED: usize = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// The broker of the run.
enum Bus {
    Kafka(Kafka),
    Rabbit(Box<Rabbit>),
}

/// The three services and the cluster, until the run is over.
struct World {
    order: Service,
    payment: Service,
    inventory: Service,
}

impl World {
    fn services(&mut self) -> [&mut Service; 3] {
        [&mut self.order, &mut self.payment, &mut self.inventory]
    }
}

async fn run(args: Args) -> Result<bool, BoxError> {
    let counters = Counters::install().ok_or("a metrics recorder is installed already")?;
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let store = match &args.database_url {
        Some(url) => Store::Server(url.clone()),
        None => Store::Sqlite(runtime::fresh_dir(&args.data_dir)?),
    };
    let bus = match args.broker.clone() {
        Some(uri) if rabbit::is_amqp(&uri) => Bus::Rabbit(Box::new(Rabbit::start(&uri).await?)),
        Some(brokers) => Bus::Kafka(Kafka::start(Some(brokers))?),
        None => Bus::Kafka(Kafka::start(args.brokers.clone())?),
    };
    let (stop, _) = watch::channel(false);
    let mut world = None;
    let outcome = {
        let run = run_on(&args, &bus, &counters, seed, store, &mut world, &stop);
        match bus {
            Bus::Kafka(_) => run.await,
            // On RabbitMQ, Ctrl-C ends the run too, so that its exchange and queues are deleted.
            Bus::Rabbit(_) => tokio::select! {
                outcome = run => outcome,
                _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
            },
        }
    };
    // The services are stopped already unless the run ended early (an error, Ctrl-C): stop them
    // now, before the queues go (a running consumer would declare its queue again).
    stop.send_replace(true);
    if let Some(world) = world.as_mut() {
        for service in world.services() {
            service.join(Duration::from_secs(15)).await;
        }
    }
    if let Bus::Rabbit(rabbit) = bus {
        for failure in rabbit.delete().await {
            eprintln!("warning: {failure}");
        }
    }
    outcome
}

/// The run on `bus`: its services go to `slot` (so that they can be stopped when the run is cut
/// short) and stop with `stop`.
async fn run_on(
    args: &Args,
    bus: &Bus,
    counters: &Counters,
    seed: u64,
    store: Store,
    slot: &mut Option<World>,
    stop: &watch::Sender<bool>,
) -> Result<bool, BoxError> {
    let say = |line: String| {
        if !args.quiet {
            println!("{line}");
        }
    };
    let stopping = stop.subscribe();
    say(format!(
        "ddd example: {} orders, seed {seed}{}",
        args.orders,
        if args.chaos { ", chaos mode" } else { "" }
    ));
    say(format!("  databases: {}", store.describe()));
    let mock = match bus {
        Bus::Kafka(kafka) => {
            say(format!("  kafka:     {}", kafka.describe()));
            kafka.is_mock()
        }
        Bus::Rabbit(rabbit) => {
            say(format!("  rabbitmq:  {}", rabbit.describe()));
            false
        }
    };
    if args.database_url.is_none() || mock {
        say("  (embedded defaults; see --database-url and --broker for real servers)".into());
    }

    // Kafka: topics first (many brokers do not create them on use), and where this run starts.
    // RabbitMQ: the run's exchange and queues are declared already (`Rabbit::start`).
    let (start, wire) = match bus {
        Bus::Kafka(kafka) => {
            kafka.provision().await?;
            let start = kafka.end_offsets()?;
            if !kafka.is_mock() {
                kafka.skip_earlier_runs(&start);
            }
            (start, Wire::Kafka(kafka.brokers().to_owned()))
        }
        Bus::Rabbit(rabbit) => (HashMap::new(), Wire::Rabbit(rabbit.names().clone())),
    };

    // Each service: its own database with the outbox tables and its own tables.
    let (order_db, _) = store.open("order").await?;
    runtime::create_order_tables(&order_db).await?;
    let (payment_db, _) = store.open("payment").await?;
    runtime::create_payment_tables(&payment_db).await?;
    let (inventory_db, _) = store.open("inventory").await?;
    let stock = i64::try_from(args.orders.max(1) * 3).unwrap_or(i64::MAX);
    runtime::create_inventory_tables(&inventory_db, stock).await?;

    let world = slot.insert(World {
        order: Service::new(
            "order",
            order::GROUP,
            order_db.clone(),
            order::local_handlers(),
            &wire,
            stopping.clone(),
        )
        // In chaos mode, two instances of the order service: one order's payment and inventory
        // replies can then be applied at the same time, and the versioned save refuses the
        // second (a conflict, retried by the consumer on the reloaded order).
        .with_instances(if args.chaos { 2 } else { 1 }),
        payment: Service::new(
            "payment",
            payment::GROUP,
            payment_db.clone(),
            HandlerRegistry::new(),
            &wire,
            stopping.clone(),
        ),
        inventory: Service::new(
            "inventory",
            inventory::GROUP,
            inventory_db.clone(),
            HandlerRegistry::new(),
            &wire,
            stopping.clone(),
        ),
    });
    for service in world.services() {
        service.start();
    }

    let planned = plan(args.orders, seed);
    let bar = if args.quiet || args.orders <= 50 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.orders as u64).with_style(
            ProgressStyle::with_template(
                "  {bar:40.cyan/blue} {pos}/{len} orders final  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let print = {
        let bar = bar.clone();
        let quiet = args.quiet;
        move |line: String| {
            if !quiet {
                bar.suspend(|| println!("{line}"));
            }
        }
    };
    print(format!(
        "\nevent flow of the first {} orders:",
        FOLLOWED.min(args.orders)
    ));
    let monitor = tokio::spawn(monitor(order_db.clone(), bar.clone(), print.clone()));

    // Place the orders; in chaos mode, break things at a quarter, half and three quarters.
    let began = Instant::now();
    let mut injected: HashMap<String, usize> = HashMap::new();
    let (mut old_instance_left, mut placed_v1) = (0usize, Vec::new());
    let chaos_at: Vec<usize> = if args.chaos {
        vec![args.orders / 4, args.orders / 2, args.orders * 3 / 4]
    } else {
        Vec::new()
    };
    for (i, p) in planned.iter().enumerate() {
        for (round, _) in chaos_at.iter().enumerate().filter(|(_, at)| **at == i) {
            let v1_so_far = placed_v1.len();
            chaos_round(world, bus, &start, round, v1_so_far, &mut injected, &print).await?;
            old_instance_left = V1_PER_ROUND;
        }
        let mut order = if old_instance_left > 0 {
            old_instance_left -= 1;
            let order = order::Model::place_v1(p.customer, p.amount_cents, p.sku, p.quantity);
            placed_v1.push(order.id);
            order
        } else {
            order::Model::place(p.customer, p.amount_cents, p.sku, p.quantity)
        };
        if i < FOLLOWED {
            report::follow(
                order.id,
                format!(
                    "  order {}  {} {} x{} for {}",
                    report::short(order.id),
                    p.customer,
                    p.sku,
                    p.quantity,
                    report::money(p.amount_cents)
                ),
            );
            report::step(order.id, report::Step::new("order-service", "OrderCreated"));
        }
        world.order.outbox.save(&mut order).await?;
    }

    // Wait until every order is final, every outbox drained and every reply consumed.
    let n = i64::try_from(args.orders).unwrap_or(i64::MAX);
    let expected_dups = expected_duplicates(&injected);
    let deadline = began + Duration::from_secs(args.timeout_secs);
    let settled = loop {
        let done = settled(world, n).await?
            && counters.get("outbox_consumer_duplicates_total") >= expected_dups;
        if done {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = began.elapsed();
    monitor.abort();
    let _ = monitor.await;
    let final_orders = count(
        &order_db,
        "SELECT COUNT(*) FROM orders WHERE status <> 'PENDING'",
    )
    .await?;
    bar.set_position(u64::try_from(final_orders).unwrap_or(0));
    bar.finish_and_clear();
    for flow in report::take_finished(|_| true, true) {
        print(flow);
    }

    let _ = stop.send(true);
    for service in world.services() {
        service.join(Duration::from_secs(15)).await;
    }

    let mut checks = Vec::new();
    if !settled {
        checks.push(Check::new(
            false,
            format!(
                "the run settled within {} s (every order final, outboxes drained, replies consumed)",
                args.timeout_secs
            ),
        ));
    }
    match bus {
        Bus::Kafka(kafka) => checks.push(kafka_check(world, kafka, &start).await?),
        Bus::Rabbit(rabbit) => checks.push(rabbit_check(world, rabbit).await?),
    }
    let summary = summarize(
        world,
        &planned,
        &placed_v1,
        counters,
        elapsed,
        expected_dups,
        &mut checks,
    )
    .await?;
    println!("\n{summary}");
    println!("checks (against the three databases):");
    print!("{}", report::render_checks(&checks));
    let ok = checks.iter().all(|c| c.ok);
    if ok {
        println!("all checks passed");
    } else {
        println!(
            "SOME CHECKS FAILED: {} of {}",
            checks.iter().filter(|c| !c.ok).count(),
            checks.len()
        );
    }
    Ok(ok)
}

/// No event lost: every outbox row marked published is in its topic (read back).
async fn kafka_check(
    world: &World,
    kafka: &Kafka,
    start: &HashMap<(String, i32), i64>,
) -> Result<Check, BoxError> {
    let end = kafka.end_offsets()?;
    let (in_topics, read) = kafka.read_event_ids(start, &end)?;
    let mut missing = Vec::new();
    let mut rows = 0usize;
    for db in [&world.order.db, &world.payment.db, &world.inventory.db] {
        for (id, topic) in runtime::published_rows(db).await? {
            rows += 1;
            if !in_topics.get(&topic).is_some_and(|ids| ids.contains(&id)) {
                missing.push(format!("{topic}/{id}"));
            }
        }
    }
    Ok(Check::new(
        missing.is_empty(),
        format!(
            "every published event is in its Kafka topic: {} of {rows} found in the {read} messages of this run{}",
            rows - missing.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing: {}", missing.join(", "))
            }
        ),
    ))
}

/// No event lost: every outbox row marked published reached the exchange with its routing key
/// (`<aggregate type>.<event name>`): the audit queue bound with `#` received it.
async fn rabbit_check(world: &World, rabbit: &Rabbit) -> Result<Check, BoxError> {
    let mut rows = Vec::new();
    for db in [&world.order.db, &world.payment.db, &world.inventory.db] {
        rows.extend(runtime::published_routes(db).await?);
    }
    let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    let (routes, read) = rabbit.seen_routes(&ids).await;
    let missing: Vec<String> = rows
        .iter()
        .filter(|(id, key)| !routes.get(id).is_some_and(|keys| keys.contains(key)))
        .map(|(id, key)| format!("{key}/{id}"))
        .collect();
    Ok(Check::new(
        missing.is_empty(),
        format!(
            "every published event reached the RabbitMQ exchange with its routing key: {} of {} \
             found in the {read} messages of this run (audit queue bound with #){}",
            rows.len() - missing.len(),
            rows.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing: {}", missing.join(", "))
            }
        ),
    ))
}

/// Updates the progress bar and prints the flows of followed orders as they complete.
async fn monitor(db: DatabaseConnection, bar: ProgressBar, print: impl Fn(String)) {
    loop {
        if let Ok(done) = count(&db, "SELECT COUNT(*) FROM orders WHERE status <> 'PENDING'").await
        {
            bar.set_position(u64::try_from(done).unwrap_or(0));
        }
        for flow in report::take_finished(report::flow_complete, false) {
            print(flow);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One chaos round: abort every relay and one consumer (no graceful shutdown: on RabbitMQ its
/// connection closes and its unacknowledged messages go back to the queue), let work pile up,
/// restart them, and re-publish some messages of this run as duplicates.
async fn chaos_round(
    world: &mut World,
    bus: &Bus,
    start: &HashMap<(String, i32), i64>,
    round: usize,
    v1_so_far: usize,
    injected: &mut HashMap<String, usize>,
    print: &impl Fn(String),
) -> Result<(), BoxError> {
    let victim = match round % 3 {
        0 => &mut world.payment,
        1 => &mut world.order,
        _ => &mut world.inventory,
    };
    victim.kill_consumer().await;
    let group = victim.group;
    for service in world.services() {
        service.kill_relay().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for service in world.services() {
        service.start_relay();
    }
    if let Bus::Rabbit(rabbit) = bus {
        rabbit.wait_released(group).await?;
    }
    match round % 3 {
        0 => world.payment.start_consumer(),
        1 => world.order.start_consumer(),
        _ => world.inventory.start_consumer(),
    }
    let sent = match bus {
        Bus::Kafka(kafka) => {
            kafka
                .inject_duplicates(start, &["ddd.orders", "ddd.payments"], 3)
                .await?
        }
        Bus::Rabbit(rabbit) => rabbit.inject_duplicates(3).await?,
    };
    let mut copies: usize = sent.values().sum();
    for (topic, n) in sent {
        *injected.entry(topic).or_default() += n;
    }
    // Old messages replayed: the version-1 `OrderCreated`s the old instance placed so far.
    let v1_copies = match bus {
        Bus::Kafka(kafka) => kafka.reproduce_v1(start, v1_so_far).await?,
        Bus::Rabbit(rabbit) => rabbit.reproduce_v1(v1_so_far).await?,
    };
    *injected.entry("ddd.orders".to_owned()).or_default() += v1_copies;
    copies += v1_copies;
    print(format!(
        "  chaos {}: aborted the 3 relays and the {group} consumer, restarted them; \
         re-published {copies} messages as duplicates ({v1_copies} of them OrderCreated v1); \
         the next {V1_PER_ROUND} orders come from an order-service instance not upgraded yet \
         (OrderCreated v1)",
        round + 1
    ));
    Ok(())
}

/// Duplicates the consumers must skip at least: each copy of an `OrderCreated` is skipped by the
/// payment and the inventory service, each copy of a payment reply by the order service.
fn expected_duplicates(injected: &HashMap<String, usize>) -> u64 {
    let orders = injected.get("ddd.orders").copied().unwrap_or(0);
    let payments = injected.get("ddd.payments").copied().unwrap_or(0);
    (orders * 2 + payments) as u64
}

async fn settled(world: &World, n: i64) -> Result<bool, BoxError> {
    let o = &world.order.db;
    if count(o, "SELECT COUNT(*) FROM orders WHERE status = 'PENDING'").await? > 0 {
        return Ok(false);
    }
    for db in [o, &world.payment.db, &world.inventory.db] {
        if count(db, "SELECT COUNT(*) FROM outbox WHERE status = 0").await? > 0 {
            return Ok(false);
        }
    }
    if count(o, "SELECT COUNT(*) FROM outbox_delivery WHERE status = 0").await? > 0 {
        return Ok(false);
    }
    // Late replies (the second answer to an order already cancelled) are consumed too, and
    // every cancellation by the payment and inventory services (refunds, releases).
    if count(o, "SELECT COUNT(*) FROM outbox_inbox").await? < 2 * n {
        return Ok(false);
    }
    let cancelled = count(o, "SELECT COUNT(*) FROM orders WHERE status = 'CANCELLED'").await?;
    for db in [&world.payment.db, &world.inventory.db] {
        if count(db, "SELECT COUNT(*) FROM outbox_inbox").await? < n + cancelled {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn summarize(
    world: &World,
    planned: &[Planned],
    placed_v1: &[uuid::Uuid],
    counters: &Counters,
    elapsed: Duration,
    expected_dups: u64,
    checks: &mut Vec<Check>,
) -> Result<String, BoxError> {
    let n = i64::try_from(planned.len()).unwrap_or(i64::MAX);
    let (o, p, i) = (&world.order.db, &world.payment.db, &world.inventory.db);
    let confirmed = count(o, "SELECT COUNT(*) FROM orders WHERE status = 'CONFIRMED'").await?;
    let cancelled = count(o, "SELECT COUNT(*) FROM orders WHERE status = 'CANCELLED'").await?;
    let refunded = runtime::sum(p, "SELECT refunded_cents FROM payments").await?;
    let released = runtime::sum(i, "SELECT released FROM reservations").await?;
    let declined = count(o, "SELECT COUNT(*) FROM orders WHERE payment = 'DECLINED'").await?;
    let rejected = count(
        o,
        "SELECT COUNT(*) FROM orders WHERE inventory = 'REJECTED'",
    )
    .await?;
    let expect_confirmed = planned
        .iter()
        .filter(|p| !p.declined() && !p.rejected())
        .count() as i64;
    let expect_declined = planned.iter().filter(|p| p.declined()).count() as i64;
    let expect_rejected = planned.iter().filter(|p| p.rejected()).count() as i64;
    let expect_refunds = planned.iter().filter(|p| p.refunded()).count() as i64;
    let expect_releases = planned.iter().filter(|p| p.released()).count() as i64;

    let mut published = [0i64; 3];
    let mut consumed = [0i64; 3];
    for (k, db) in [o, p, i].into_iter().enumerate() {
        published[k] = count(db, "SELECT COUNT(*) FROM outbox WHERE status = 1").await?;
        consumed[k] = count(db, "SELECT COUNT(*) FROM outbox_inbox").await?;
        let pending = count(db, "SELECT COUNT(*) FROM outbox WHERE status = 0").await?;
        let dead = count(db, "SELECT COUNT(*) FROM outbox WHERE status = 2").await?;
        let name = ["order", "payment", "inventory"][k];
        checks.push(Check::new(
            pending == 0 && dead == 0,
            format!("{name} outbox: no row left pending ({pending}) or dead ({dead})"),
        ));
    }
    // Optimistic concurrency: each aggregate's version counts its saves, its events are numbered
    // 1..n from it, and an order is saved three times (placed, then one save per reply).
    let orders = order::Entity::find().all(o).await?;
    let off_three: Vec<String> = orders
        .iter()
        .filter(|m| m.version != 3)
        .map(|m| format!("{} at {}", m.id, m.version))
        .collect();
    checks.push(Check::new(
        off_three.is_empty(),
        format!(
            "every order at version 3 (placed, then each reply applied once): {} of {}{}",
            orders.len() - off_three.len(),
            orders.len(),
            if off_three.is_empty() {
                String::new()
            } else {
                format!("; not: {}", off_three.join(", "))
            }
        ),
    ));
    let payments = payment::Entity::find().all(p).await?;
    let stock = inventory::Entity::find().all(i).await?;
    let audits = [
        ("order", runtime::audit_versions(o, &orders).await?),
        ("payment", runtime::audit_versions(p, &payments).await?),
        ("inventory", runtime::audit_versions(i, &stock).await?),
    ];
    for (name, audit) in &audits {
        checks.push(Check::new(
            audit.broken.is_empty(),
            format!(
                "{name} versions = events + saves without events, sequences 1..n: {} aggregates, \
                 {} events, {} event-less saves{}",
                audit.aggregates,
                audit.events,
                audit.eventless,
                if audit.broken.is_empty() {
                    String::new()
                } else {
                    format!("; broken: {}", audit.broken.join("; "))
                }
            ),
        ));
    }
    let conflicts = counters.get(order::CONFLICTS);
    let dup = counters.get("outbox_consumer_duplicates_total");
    let dlt = counters.get("outbox_consumer_dead_lettered_total");
    let events_published: i64 = published.iter().sum();
    let events_consumed: i64 = consumed.iter().sum();

    checks.push(Check::new(
        confirmed + cancelled == n,
        format!(
            "every order is CONFIRMED or CANCELLED ({} of {n})",
            confirmed + cancelled
        ),
    ));
    checks.push(Check::new(
        confirmed == expect_confirmed && declined == expect_declined && rejected == expect_rejected,
        format!(
            "outcomes follow the rules: {confirmed} confirmed (expected {expect_confirmed}), \
             {declined} payments declined ({expect_declined}), {rejected} out of stock ({expect_rejected})"
        ),
    ));
    checks.push(Check::new(
        published[0] == 2 * n
            && published[1] == n + expect_refunds
            && published[2] == n + expect_releases,
        format!(
            "events published: order {} (expected {}), payment {} ({}: {n} + {expect_refunds} refunds), \
             inventory {} ({}: {n} + {expect_releases} releases)",
            published[0],
            2 * n,
            published[1],
            n + expect_refunds,
            published[2],
            n + expect_releases
        ),
    ));
    let payments = count(p, "SELECT COUNT(*) FROM payments").await?;
    checks.push(Check::new(
        consumed[1] == n + cancelled && payments == n,
        format!(
            "payment-service applied each OrderCreated and OrderCancelled once: {} inbox rows \
             ({n} orders + {cancelled} cancelled), {payments} payments",
            consumed[1]
        ),
    ));
    let reservations = count(i, "SELECT COUNT(*) FROM reservations").await?;
    checks.push(Check::new(
        consumed[2] == n + cancelled && reservations == n,
        format!(
            "inventory-service applied each OrderCreated and OrderCancelled once: {} inbox rows \
             ({n} orders + {cancelled} cancelled), {reservations} reservations",
            consumed[2]
        ),
    ));
    let stock = i64::try_from(planned.len().max(1) * 3).unwrap_or(i64::MAX);
    let on_hand = runtime::sum(i, "SELECT on_hand FROM stock").await?;
    let reserved = runtime::sum(
        i,
        "SELECT quantity FROM reservations WHERE status = 'RESERVED'",
    )
    .await?;
    let in_stock = stock * (inventory::SKUS.len() as i64 - 1);
    checks.push(Check::new(
        on_hand == in_stock - reserved,
        format!(
            "stock taken once per reservation held, given back once per release: {on_hand} on hand \
             = {in_stock} - {reserved} still reserved"
        ),
    ));
    compensation_checks(world, expect_refunds, expect_releases, checks).await?;
    version_checks(world, placed_v1, checks).await?;
    checks.push(Check::new(
        consumed[0] == 2 * n,
        format!(
            "order-service applied each reply once: {} inbox rows, {} replies",
            consumed[0],
            2 * n
        ),
    ));
    let notices = count(o, "SELECT COUNT(*) FROM notices").await?;
    let delivered = count(o, "SELECT COUNT(*) FROM outbox_delivery WHERE status = 1").await?;
    checks.push(Check::new(
        notices == confirmed && delivered == confirmed,
        format!(
            "one confirmation notice per confirmed order: {notices} notices, {delivered} deliveries done"
        ),
    ));
    checks.push(Check::new(
        dlt == 0,
        format!("no message dead-lettered by a consumer ({dlt})"),
    ));
    if expected_dups > 0 {
        checks.push(Check::new(
            dup >= expected_dups,
            format!(
                "every injected duplicate was skipped: {dup} skipped, {expected_dups} injected"
            ),
        ));
    }

    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut out = String::new();
    out.push_str("summary\n");
    out.push_str(&format!(
        "  orders   {n} placed, {confirmed} confirmed, {cancelled} cancelled \
         ({declined} payment declined, {rejected} out of stock)\n"
    ));
    out.push_str(&format!(
        "  events   {events_published} published (order {}, payment {}, inventory {}), \
         {events_consumed} consumed, {dup} duplicates skipped, {dlt} dead-lettered\n",
        published[0], published[1], published[2]
    ));
    out.push_str(&format!(
        "  undone   {} refunded for cancelled orders, {released} items put back in stock\n",
        report::money(refunded)
    ));
    if !placed_v1.is_empty() {
        out.push_str(&format!(
            "  versions {} orders placed by an instance not upgraded yet (OrderCreated v1), read as v2 \
             by the payment and inventory services\n",
            placed_v1.len()
        ));
    }
    out.push_str(&format!(
        "  saves    {conflicts} order saves refused by a version conflict (another reply saved \
         the order first) and applied again\n"
    ));
    out.push_str(&format!(
        "  time     {secs:.2} s, {:.0} events/s published, {:.0} orders/s\n",
        events_published as f64 / secs,
        n as f64 / secs
    ));
    Ok(out)
}

/// For every cancelled order: the money captured was refunded and the items reserved were
/// released, each once; a confirmed order keeps both.
async fn compensation_checks(
    world: &World,
    expect_refunds: i64,
    expect_releases: i64,
    checks: &mut Vec<Check>,
) -> Result<(), BoxError> {
    let (o, p, i) = (&world.order.db, &world.payment.db, &world.inventory.db);
    let status: HashMap<uuid::Uuid, String> = order::Entity::find()
        .all(o)
        .await?
        .into_iter()
        .map(|m| (m.id, m.status))
        .collect();
    let cancelled = |id: &uuid::Uuid| status.get(id).map(String::as_str) == Some(order::CANCELLED);

    let (mut captured, mut refunded, mut wrong) = (0i64, 0i64, Vec::new());
    for pay in payment::Entity::find().all(p).await? {
        let took = if pay.status == "DECLINED" {
            0
        } else {
            pay.amount_cents
        };
        let owed_back = if cancelled(&pay.order_id) { took } else { 0 };
        if cancelled(&pay.order_id) {
            captured += took;
            refunded += pay.refunded_cents;
        }
        if pay.refunded_cents != owed_back {
            wrong.push(format!(
                "{}: {} taken, {} refunded",
                report::short(pay.order_id),
                report::money(took),
                report::money(pay.refunded_cents)
            ));
        }
    }
    let refunds = count(
        p,
        "SELECT COUNT(*) FROM outbox WHERE type = 'PaymentRefunded'",
    )
    .await?;
    checks.push(Check::new(
        wrong.is_empty() && captured == refunded && refunds == expect_refunds,
        format!(
            "money balances for every cancelled order: {} captured = {} refunded, in {refunds} \
             refunds (expected {expect_refunds}); confirmed orders keep theirs{}",
            report::money(captured),
            report::money(refunded),
            if wrong.is_empty() {
                String::new()
            } else {
                format!("; wrong: {}", wrong.join(", "))
            }
        ),
    ));

    let (mut reserved, mut released, mut wrong) = (0i64, 0i64, Vec::new());
    for r in inventory::Entity::find().all(i).await? {
        let held = if r.status == "REJECTED" {
            0
        } else {
            i64::from(r.quantity)
        };
        let owed_back = if cancelled(&r.order_id) { held } else { 0 };
        if cancelled(&r.order_id) {
            reserved += held;
            released += i64::from(r.released);
        }
        if i64::from(r.released) != owed_back {
            wrong.push(format!(
                "{}: {held} reserved, {} released",
                report::short(r.order_id),
                r.released
            ));
        }
    }
    let releases = count(
        i,
        "SELECT COUNT(*) FROM outbox WHERE type = 'StockReleased'",
    )
    .await?;
    checks.push(Check::new(
        wrong.is_empty() && reserved == released && releases == expect_releases,
        format!(
            "stock balances for every cancelled order: {reserved} items reserved = {released} \
             released, in {releases} releases (expected {expect_releases}); confirmed orders keep \
             theirs{}",
            if wrong.is_empty() {
                String::new()
            } else {
                format!("; wrong: {}", wrong.join(", "))
            }
        ),
    ));
    Ok(())
}

/// Every payment and reservation matches its order, also for the orders whose `OrderCreated`
/// went out as version 1 (a payload without `customer_id` and `currency`: only the upcast reads
/// it as version 2); the outbox holds exactly those as version 1.
async fn version_checks(
    world: &World,
    placed_v1: &[uuid::Uuid],
    checks: &mut Vec<Check>,
) -> Result<(), BoxError> {
    let (o, p, i) = (&world.order.db, &world.payment.db, &world.inventory.db);
    let orders: HashMap<uuid::Uuid, order::Model> = order::Entity::find()
        .all(o)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let payments: HashMap<uuid::Uuid, payment::Model> = payment::Entity::find()
        .all(p)
        .await?
        .into_iter()
        .map(|m| (m.order_id, m))
        .collect();
    let reservations: HashMap<uuid::Uuid, inventory::Model> = inventory::Entity::find()
        .all(i)
        .await?
        .into_iter()
        .map(|m| (m.order_id, m))
        .collect();
    let mut wrong = Vec::new();
    for (id, order) in &orders {
        let paid = payments.get(id).is_some_and(|pay| {
            pay.customer == order.customer
                && pay.amount_cents == order.amount_cents
                && pay.currency == order::V1_CURRENCY
        });
        let held = reservations
            .get(id)
            .is_some_and(|r| r.sku == order.sku && r.quantity == order.quantity);
        if !paid || !held {
            wrong.push(report::short(*id));
        }
    }
    let v1_rows = count(
        o,
        "SELECT COUNT(*) FROM outbox WHERE type = 'OrderCreated' AND version = 1",
    )
    .await?;
    let v1_applied = placed_v1
        .iter()
        .filter(|id| payments.contains_key(id) && reservations.contains_key(id))
        .count();
    checks.push(Check::new(
        wrong.is_empty() && v1_rows == placed_v1.len() as i64 && v1_applied == placed_v1.len(),
        format!(
            "every payment and reservation matches its order's OrderCreated: {} orders, {} of them \
             sent as version 1 ({v1_rows} v1 rows in the outbox, {v1_applied} applied by both services \
             through the upcast to v2){}",
            orders.len(),
            placed_v1.len(),
            if wrong.is_empty() { String::new() } else { format!("; not: {}", wrong.join(", ")) }
        ),
    ));
    Ok(())
}
