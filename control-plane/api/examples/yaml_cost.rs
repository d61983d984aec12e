//! Times `parse_documents` + `validate` (what an apply does before the store's lock) on worst-case
//! inputs at growing sizes (1x, 2x, 4x, ...), to see how each grows. docs/resources.md quotes it.
//!
//! cargo run --release -p weft-api --example yaml_cost -- CASE BASE [STEPS]
//! (CASE: flow_seq, flow_open, flow_map, block_seq, block_map, alias_spec, alias_spec_flat, many_docs,
//! many_bad_docs, many_keys, many_keys_top, many_ports, many_ports_bad, dup_keys, long_scalar,
//! simple_keys, flow_simple)
use std::time::Instant;
use weft_api::resources::parse_documents;

fn service(i: usize) -> String {
    format!("apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: s{i}\nspec:\n  ports:\n  - port: 80\n")
}

fn case(name: &str, n: usize) -> String {
    nesting(name, n)
        .or_else(|| counts(name, n))
        .unwrap_or_else(|| {
            eprintln!("unknown case {name}; see the file's header");
            std::process::exit(2)
        })
}

/// Deep structures and aliases.
fn nesting(name: &str, n: usize) -> Option<String> {
    Some(match name {
        "flow_seq" => format!(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: a}}\nspec: {}{}\n",
            "[".repeat(n),
            "]".repeat(n)
        ),
        "flow_open" => "[".repeat(n),
        "flow_map" => format!("spec: {}x{}\n", "{a: ".repeat(n), "}".repeat(n)),
        "block_seq" => format!("spec:\n  x: {}1\n", "- ".repeat(n)),
        "block_map" => {
            let mut s = String::from("spec:\n");
            for i in 0..n {
                s.push_str(&" ".repeat(i + 1));
                s.push_str("a:\n");
            }
            s
        }
        "alias_bomb" => {
            let mut s = String::from("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nx0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
            for i in 1..n {
                s.push_str(&format!(
                    "x{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n",
                    p = i - 1
                ));
            }
            s.push_str("spec: {ports: [{port: 80}]}\n");
            s
        }
        "alias_spec" => {
            let mut s = String::from("apiVersion: weft.dev/v1\nkind: MeshConfig\nmetadata: {name: default}\nspec:\n  x0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
            for i in 1..n {
                s.push_str(&format!(
                    "  x{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n",
                    p = i - 1
                ));
            }
            s
        }
        "alias_spec_flat" => {
            let mut s = String::from("apiVersion: weft.dev/v1\nkind: MeshConfig\nmetadata: {name: default}\nspec:\n  big: &b [");
            for _ in 0..1000 {
                s.push_str("xxxxxxxx,");
            }
            s.push_str("]\n  more:\n");
            for _ in 0..n {
                s.push_str("  - *b\n");
            }
            s
        }
        "alias_flat" => {
            let mut s = String::from(
                "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nbig: &b [",
            );
            for _ in 0..1000 {
                s.push_str("xxxxxxxx,");
            }
            s.push_str("]\nspec:\n  ports:\n");
            for _ in 0..n {
                s.push_str("  - *b\n");
            }
            s
        }
        _ => return None,
    })
}

/// Many documents, keys, entries, bytes.
fn counts(name: &str, n: usize) -> Option<String> {
    Some(match name {
        "many_docs" => (0..n).map(service).collect::<Vec<_>>().join("---\n"),
        "many_bad_docs" => (0..n)
            .map(|i| service(i).replace("port: 80", "port: x"))
            .collect::<Vec<_>>()
            .join("---\n"),
        "many_keys" => {
            let mut s = String::from(
                "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: a\n  labels:\n",
            );
            for i in 0..n {
                s.push_str(&format!("    k{i}: v\n"));
            }
            s.push_str("spec:\n  ports:\n  - port: 80\n");
            s
        }
        "many_keys_top" => {
            let mut s = String::new();
            for i in 0..n {
                s.push_str(&format!("k{i}: v\n"));
            }
            s
        }
        "many_ports" => {
            let mut s = String::from(
                "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n",
            );
            for i in 0..n {
                s.push_str(&format!("  - port: {}\n    name: p{i}\n", i % 65535 + 1));
            }
            s
        }
        "many_ports_bad" => {
            let mut s = String::from(
                "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n",
            );
            for i in 0..n {
                s.push_str(&format!("  - port: 0\n    name: P_{i}\n"));
            }
            s
        }
        "dup_keys" => {
            let mut s = String::from(
                "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: a\n  labels:\n",
            );
            for _ in 0..n {
                s.push_str("    k: v\n");
            }
            s.push_str("spec: {}\n");
            s
        }
        "long_scalar" => format!(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: a{}\nspec: {{}}\n",
            "x".repeat(n)
        ),
        "simple_keys" => format!("{}\n", "a: ".repeat(n)),
        "flow_simple" => format!("[{}]\n", "a: b, ".repeat(n)),
        _ => return None,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(name), Some(Ok(base))) = (args.get(1), args.get(2).map(|b| b.parse::<usize>()))
    else {
        eprintln!("usage: yaml_cost CASE BASE [STEPS]");
        std::process::exit(2)
    };
    let steps: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    for k in 0..steps {
        let n = base << k;
        let text = case(name, n);
        let t = Instant::now();
        let r = parse_documents("p.yaml", &text);
        let (ok, errs, first) = match &r {
            Ok(d) => {
                let e: usize = d.iter().map(|d| d.validate().len()).sum();
                (d.len(), e, String::new())
            }
            Err(e) => (0, e.len(), e[0].to_string().chars().take(120).collect()),
        };
        let el = t.elapsed();
        println!(
            "{name:14} n={n:>8} bytes={:>9} {:>9.1} ms ok={ok} errs={errs} {first}",
            text.len(),
            el.as_secs_f64() * 1e3
        );
        if el.as_secs() > 20 {
            break;
        }
    }
}
