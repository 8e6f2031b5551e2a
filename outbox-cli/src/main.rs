//! `outbox`: the outbox's command line; see the [`outbox_cli`] crate.

fn main() -> std::process::ExitCode {
    outbox_cli::main_outbox()
}
