//! The library's top-level modules depend downwards only: no two import each other, directly
//! or through others (read from the `crate::MODULE` paths in the sources).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `crate::NAME` a module's files name, NAME one of `modules`.
fn uses(path: &Path, modules: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            uses(&e.path(), modules, out);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return;
    }
    let text = std::fs::read_to_string(path).unwrap();
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if modules.contains(&name) {
            out.insert(name);
        }
    }
}

#[test]
fn no_two_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(".rs").map(str::to_string).unwrap_or(name);
            (name != "lib" && name != "main").then_some(name)
        })
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &modules {
        let mut out = BTreeSet::new();
        for p in [src.join(m), src.join(format!("{m}.rs"))] {
            if p.exists() {
                uses(&p, &modules, &mut out);
            }
        }
        out.remove(m);
        graph.insert(m.clone(), out);
    }
    assert!(graph["cli"].contains("jobs") && graph["model"].contains("kernels"), "the scan reads the sources: {graph:?}");
    // Depth-first search from every module; a path back to a module on the stack is a cycle.
    fn visit<'a>(m: &'a str, graph: &'a BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<&'a str>) {
        if let Some(at) = stack.iter().position(|s| *s == m) {
            panic!("modules import each other: {} -> {m}", stack[at..].join(" -> "));
        }
        stack.push(m);
        for d in &graph[m] {
            visit(d, graph, stack);
        }
        stack.pop();
    }
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new());
    }
}
