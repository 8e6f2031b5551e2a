//! Compile-time behaviour of the macros: what compiles, and the error each mistake gets.
//!
//! One diagnostic per file under `tests/ui/<macro>/{pass,fail}/`; the expected compiler output is
//! the `.stderr` next to each failing case (regenerate with `TRYBUILD=overwrite`, then read it).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/*/pass/*.rs");
    t.compile_fail("tests/ui/*/fail/*.rs");
}
