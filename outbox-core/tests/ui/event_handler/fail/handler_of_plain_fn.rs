// `handler!` names a function that `#[event_handler]` registered.
fn not_a_handler() {}

fn main() {
    let _ = outbox_core::handler!(not_a_handler);
}
