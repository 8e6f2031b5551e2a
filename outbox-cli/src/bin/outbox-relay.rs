//! `outbox-relay`: the old name of `outbox relay`, kept as a binary that behaves exactly like it.

fn main() -> std::process::ExitCode {
    outbox_cli::main_relay()
}
