//! The core and the codec stay sans-IO: no file under src/core or src/codec may use mio,
//! sockets, files, threads or the clock. Only the shells (driver, simulator, binaries) do, so
//! that the simulator and the tests can drive the very code the daemon runs, on a virtual
//! clock. Test code (files named `tests.rs`, and what follows `#[cfg(test)]`) may read the
//! clock for a base instant.

use std::fs;
use std::path::{Path, PathBuf};

/// What sans-IO code must not name.
const FORBIDDEN: [&str; 7] = [
    "mio::",
    "use mio",
    "std::net",
    "std::fs",
    "std::thread",
    "Instant::now",
    "SystemTime::now",
];
/// Modules of `std` that a grouped import (`use std::{...}`) must not bring in.
const FORBIDDEN_STD: [&str; 3] = ["net", "fs", "thread"];

/// The violations in one file's text: (line number, line).
fn violations(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut grouped: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        if FORBIDDEN.iter().any(|f| code.contains(f)) {
            found.push((i + 1, line.trim().to_owned()));
        }
        if code.trim_start().starts_with("use std::{") {
            grouped = Some(String::new());
        }
        if let Some(g) = &mut grouped {
            g.push_str(code);
            g.push(' ');
            if code.contains("};") {
                // Each imported path's first segment, e.g. `net` of `net::TcpStream`.
                let inner = g.trim_start().trim_start_matches("use std::{");
                let hit = inner
                    .split(|c: char| c == ',' || c == '{' || c == '}' || c.is_whitespace())
                    .filter_map(|item| item.split("::").next())
                    .any(|first| FORBIDDEN_STD.contains(&first));
                if hit {
                    found.push((i + 1, g.trim().to_owned()));
                }
                grouped = None;
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn core_and_codec_touch_no_socket_file_thread_or_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root.join("core"), &mut files);
    rust_files(&root.join("codec"), &mut files);
    assert!(files.len() > 10, "the walk found only {files:?}");
    let mut bad = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).unwrap();
        for (line, what) in violations(&text) {
            bad.push(format!("{}:{line}: {what}", f.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "sans-IO code touches the OS:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_each_forbidden_use() {
    for text in [
        "use mio::Poll;",
        "let s = std::net::TcpStream::connect(a);",
        "use std::fs::File;",
        "use std::{collections::HashMap, fs};",
        "use std::{\n    io,\n    net::TcpStream,\n};",
        "use std::{thread, time::Duration};",
        "let t = Instant::now();",
        "let t = std::time::SystemTime::now();",
        "std::thread::spawn(|| {});",
    ] {
        assert!(!violations(text).is_empty(), "missed: {text}");
    }
    for text in [
        "use std::time::{Duration, Instant};",
        "use std::{collections::BTreeMap, rc::Rc};",
        "// a comment about mio:: and Instant::now",
        "fn f() {}\n#[cfg(test)]\nmod tests { fn t() { Instant::now(); } }",
        "let offset = self.dir_offset; // not fs",
    ] {
        assert!(violations(text).is_empty(), "false alarm: {text}");
    }
}
