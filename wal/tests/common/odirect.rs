// What a test does when the file system under its temp dir refuses O_DIRECT: skip loudly, or
// fail when `PAXRING_REQUIRE_ODIRECT` asks for it (CI sets it, so a refusing file system can
// never turn the O_DIRECT tests into silent passes). The one copy of this decision: the WAL's
// integration tests use it as `common::odirect`; the WAL's and the tools' unit tests `include!`
// this file into a module. So it has no inner attributes or inner doc comments (which `include!`
// refuses) and depends on `std` only.
use std::fmt::Display;
use std::path::Path;

/// The environment variable that turns an O_DIRECT skip into a failure.
pub const REQUIRE_ODIRECT_VAR: &str = "PAXRING_REQUIRE_ODIRECT";

/// True when `value` (of `PAXRING_REQUIRE_ODIRECT`) asks for O_DIRECT: set, not empty, not "0".
pub fn required_by(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// True when this process's environment requires O_DIRECT.
pub fn odirect_required() -> bool {
    required_by(std::env::var_os(REQUIRE_ODIRECT_VAR).as_deref())
}

/// The decision for a refused O_DIRECT open: `Ok(banner)` to print and skip, or `Err(message)`
/// to fail with, naming the variable, the directory and the test.
pub fn refusal_decision(
    required: bool,
    test: &str,
    dir: &Path,
    error: &dyn Display,
) -> Result<String, String> {
    if required {
        Err(format!(
            "{test}: {REQUIRE_ODIRECT_VAR}=1 is set but {} refuses O_DIRECT ({error}); put TMPDIR \
             on a file system that supports it (ext4, xfs), or unset {REQUIRE_ODIRECT_VAR} to \
             let the test skip",
            dir.display()
        ))
    } else {
        Ok(format!(
            "\n**********\nSKIPPED {test}: {} refuses O_DIRECT ({error}); set TMPDIR to a \
             directory on ext4 or xfs ({REQUIRE_ODIRECT_VAR}=1 makes this a failure)\n**********\n",
            dir.display()
        ))
    }
}

/// Called where a test would skip because `dir` refuses O_DIRECT: prints the SKIPPED banner and
/// returns (the caller then returns early), or panics when `PAXRING_REQUIRE_ODIRECT` is set.
pub fn skip_or_fail(test: &str, dir: &Path, error: &dyn Display) {
    match refusal_decision(odirect_required(), test, dir, error) {
        Ok(banner) => eprintln!("{banner}"),
        Err(message) => panic!("{message}"),
    }
}
