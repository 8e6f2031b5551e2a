//! Runs the example as a user would, on the embedded defaults, in chaos mode: every order must
//! end in a final state and every self-check must pass.

use std::process::Command;

#[test]
fn chaos_run_on_embedded_defaults_passes_its_checks() {
    let dir = std::env::temp_dir().join(format!("ddd-smoke-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_ddd"))
        .args(["--orders", "20", "--chaos", "--quiet", "--seed", "42"])
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("DDD_DATABASE_URL")
        .env_remove("DDD_BROKERS")
        .env_remove("DDD_ORDERS")
        .output()
        .expect("run the ddd binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "exit status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(stdout.contains("  orders   20 placed, "), "{stdout}");
    assert!(
        stdout.contains("every injected duplicate was skipped"),
        "{stdout}"
    );
    // Cancelled orders are undone, and the orders of the old (v1) instance are read as v2.
    assert!(
        stdout.contains("ok    money balances for every cancelled order"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    stock balances for every cancelled order"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  versions 6 orders placed by an instance not upgraded yet"),
        "{stdout}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // Quiet: no flow, no announcement.
    assert!(!stdout.contains("event flow"), "{stdout}");
}
