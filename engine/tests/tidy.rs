//! The protocol modules (`src/core`), the round driver (`src/driver`) and the simulator
//! (`src/sim`) use no clock, I/O, thread or
//! randomness of their own: this test reads their sources and fails on any forbidden name.
use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "std::time",
    "Instant",
    "SystemTime",
    "std::thread",
    "thread::spawn",
    "std::fs",
    "std::net",
    "std::io",
    "std::env",
    "std::process",
    "rand::",
    "thread_rng",
    "getrandom",
    "tokio",
    "io_uring",
    "libc",
    "RandomState",
    "HashMap",
    "HashSet",
    "unsafe",
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_and_sim_are_pure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root.join("core"), &mut files);
    sources(&root.join("sim"), &mut files);
    sources(&root.join("driver"), &mut files);
    assert!(files.len() >= 6, "found the sources: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    problems.push(format!("{}:{}: {word}: {line}", file.display(), number + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "impure code:\n{}", problems.join("\n"));
}
