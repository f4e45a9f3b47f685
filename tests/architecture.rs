//! ARCHITECTURE.md's invariants about the code itself, checked from the
//! source: only `src/mqtt/` names rumqttc, and the modules of `src/` import
//! one another in one direction only (no two files import each other, and
//! the top-level modules form no cycle). Imports are read from `crate::`,
//! `super::` and `self::` paths outside `#[cfg(test)] mod tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/app/mod.rs` is `app`, `src/main.rs` the
/// crate root (empty).
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "main") {
        parts.pop();
    }
    parts
}

/// The code of a file without its unit tests.
fn code_without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// The paths a file names: `crate::a::b`, `super::x` and, for
/// `use crate::a::{b, c::d}`, each item of the braces.
fn named_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            let path = code[at..end].trim_end_matches(':').to_string();
            if code[end..].starts_with('{') {
                if let Some(close) = code[end..].find('}') {
                    for item in code[end + 1..end + close].split(',') {
                        let item = item.split(" as ").next().unwrap_or("").trim();
                        if !item.is_empty() && item != "self" {
                            out.push(format!("{path}::{item}"));
                        }
                    }
                }
            }
            out.push(path);
        }
    }
    out
}

/// The longest known module a path from `module` leads into.
fn resolve(module: &[String], path: &str, known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut parts = path.split("::").peekable();
    let mut base: Vec<String> = match parts.peek().copied() {
        Some("crate") => {
            parts.next();
            Vec::new()
        }
        Some("self") => {
            parts.next();
            module.to_vec()
        }
        _ => module.to_vec(),
    };
    while parts.peek() == Some(&"super") {
        parts.next();
        base.pop();
    }
    let mut best = None;
    let mut candidate = base;
    if known.contains(&candidate) {
        best = Some(candidate.clone());
    }
    for part in parts {
        candidate.push(part.to_string());
        if known.contains(&candidate) {
            best = Some(candidate.clone());
        }
    }
    best
}

fn imports() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let known: BTreeSet<Vec<String>> = all.iter().map(|f| module_of(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &all {
        let module = module_of(file);
        if module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let targets: BTreeSet<Vec<String>> = named_paths(code_without_tests(&text))
            .iter()
            .filter_map(|p| resolve(&module, p, &known))
            .filter(|t| *t != module)
            .collect();
        graph.insert(module, targets);
    }
    graph
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "main".into()
    } else {
        module.join("::")
    }
}

#[test]
fn only_the_mqtt_module_uses_rumqttc() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let outside: Vec<String> = all
        .iter()
        .filter(|f| !f.starts_with(src().join("mqtt")))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("rumqttc"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "rumqttc outside src/mqtt: {outside:?}");
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = imports();
    let mut mutual = Vec::new();
    for (a, targets) in &graph {
        for b in targets {
            // A parent naming its own children (`mod x; pub use x::...`)
            // is how Rust declares them, not an import back.
            let parent_of_b = b.len() == a.len() + 1 && b.starts_with(a);
            if a < b && !parent_of_b && graph.get(b).is_some_and(|t| t.contains(a)) {
                mutual.push(format!("{} <-> {}", name(a), name(b)));
            }
        }
    }
    assert!(
        mutual.is_empty(),
        "files that import each other: {mutual:?}"
    );
    // The graph is not empty: the check reads real imports.
    assert!(graph[&vec!["routing".to_string()]].contains(&vec!["replies".to_string()]));
}

#[test]
fn top_level_modules_form_no_cycle() {
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, targets) in imports() {
        // The crate root declares every module.
        let Some(from) = a.first() else { continue };
        for b in targets {
            if let Some(to) = b.first().filter(|t| *t != from) {
                top.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    // Depth-first search; a module met again on the current path closes a
    // cycle.
    fn visit(
        m: &str,
        top: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            cycles.push(format!("{} -> {m}", path[i..].join(" -> ")));
            return;
        }
        if !done.insert(m.to_string()) {
            return;
        }
        path.push(m.to_string());
        for next in top.get(m).into_iter().flatten() {
            visit(next, top, path, done, cycles);
        }
        path.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for m in top.keys() {
        visit(m, &top, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "module cycles: {cycles:?}");
    assert!(top["mqtt"].contains("routing"), "{top:?}");
}
