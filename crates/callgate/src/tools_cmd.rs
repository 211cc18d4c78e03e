//! `callgate tools`: the pinned definitions of upstream MCP tools. `list` shows every pin and
//! whether it is blocked, `diff` what a blocked tool's server changed, `approve` accepts the
//! new definition (optionally only the one with the digest `diff` showed).

use anyhow::{Context, anyhow};
use callgate_core::config::Config;
use callgate_gateway::mcp::pins;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ToolsCommand {
    /// Every pinned tool: server, name, digest, who approved it, and whether it is blocked.
    List,
    /// What changed in blocked tools (all of them, or one: SERVER/TOOL or its function name).
    Diff { tool: Option<String> },
    /// Approve a blocked tool's new definition.
    Approve {
        /// SERVER/TOOL, or the tool's function name (`github.create_issue`).
        tool: String,
        /// Approve only if the pending definition still has this digest (from `diff`).
        #[arg(long)]
        digest: Option<String>,
        /// Who approves (recorded in the pin file).
        #[arg(long, env = "USER", default_value = "administrator")]
        by: String,
    },
}

fn pins_path(config: &Path) -> anyhow::Result<(Config, PathBuf)> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let vars = crate::commands::offline_vars();
    let cfg = Config::parse(&text, &|n| vars(n))
        .map_err(|e| anyhow!("{}: {}", config.display(), e.message))?;
    let base = callgate_gateway::runtime::base_dir(config);
    let path = base.join(&cfg.mcp.pins);
    Ok((cfg, path))
}

/// Finds (server, tool) from `SERVER/TOOL` or a function name.
fn resolve(cfg: &Config, file: &pins::PinFile, name: &str) -> anyhow::Result<(String, String)> {
    if let Some((s, t)) = name.split_once('/') {
        return Ok((s.to_string(), t.to_string()));
    }
    for (server, tools) in &file.servers {
        let prefix = cfg
            .mcp
            .servers
            .get(server)
            .and_then(|s| s.prefix.clone())
            .unwrap_or_else(|| server.clone());
        for tool in tools.keys() {
            if callgate_core::registry::tool_function_name(&prefix, tool) == name {
                return Ok((server.clone(), tool.clone()));
            }
        }
    }
    Err(anyhow!(
        "no pinned tool {name:?} (give SERVER/TOOL or its function name)"
    ))
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Above this many lines by lines, the two definitions are shown whole rather than diffed
/// (the table is lines × lines: a server's huge definitions must not exhaust memory).
const MAX_DIFF_CELLS: usize = 4_000_000;

/// A line diff of two texts (longest common subsequence; definitions are small).
fn diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    if (a.len() + 1).saturating_mul(b.len() + 1) > MAX_DIFF_CELLS {
        let mut out = format!(
            "(too large to diff: {} lines before, {} after; both shown whole)\n",
            a.len(),
            b.len()
        );
        out.extend(a.iter().map(|l| format!("- {l}\n")));
        out.extend(b.iter().map(|l| format!("+ {l}\n")));
        return out;
    }
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

pub fn run(config: &Path, cmd: ToolsCommand) -> anyhow::Result<ExitCode> {
    let (cfg, path) = pins_path(config)?;
    match cmd {
        ToolsCommand::List => {
            let file = pins::read(&path).map_err(|e| anyhow!(e))?;
            if file.servers.is_empty() {
                outln!(
                    "no pinned tools yet ({}): they are pinned when Callgate first connects to their server",
                    path.display()
                );
            }
            for (server, tools) in &file.servers {
                for (name, pin) in tools {
                    let state = if pin.pending.is_some() {
                        "BLOCKED (changed)"
                    } else {
                        "ok"
                    };
                    outln!(
                        "{server}/{name}  {state}  {}  approved by {} at {}",
                        pin.digest.get(..16).unwrap_or(&pin.digest),
                        pin.approved_by,
                        pin.approved_at
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ToolsCommand::Diff { tool } => {
            let file = pins::read(&path).map_err(|e| anyhow!(e))?;
            let only = tool.map(|t| resolve(&cfg, &file, &t)).transpose()?;
            let mut any = false;
            for (server, tools) in &file.servers {
                for (name, pin) in tools {
                    if only.as_ref().is_some_and(|(s, t)| s != server || t != name) {
                        continue;
                    }
                    let Some(p) = &pin.pending else { continue };
                    any = true;
                    outln!(
                        "{server}/{name}: approved {} → pending {}",
                        pin.digest,
                        p.digest
                    );
                    outln!("seen {}", p.seen_at);
                    out!("{}", diff(&pretty(&pin.approved), &pretty(&p.definition)));
                    outln!(
                        "approve with: callgate tools approve {server}/{name} --digest {}",
                        p.digest
                    );
                }
            }
            if !any {
                outln!("no blocked tools: every tool matches its pinned definition");
            }
            Ok(ExitCode::SUCCESS)
        }
        ToolsCommand::Approve { tool, digest, by } => {
            let file = pins::read(&path).map_err(|e| anyhow!(e))?;
            let (server, name) = resolve(&cfg, &file, &tool)?;
            let d = pins::update(&path, |f| {
                pins::approve(f, &server, &name, digest.as_deref(), &by)
            })
            .map_err(|e| anyhow!(e))?
            .map_err(|e| anyhow!(e))?;
            outln!(
                "approved {server}/{name} (digest {d}); the running gateway picks it up on its next request"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_lines_and_shows_huge_definitions_whole() {
        assert_eq!(diff("a\nb\nc", "a\nc\nd"), "  a\n- b\n  c\n+ d\n");
        let big: String = (0..3000).map(|i| format!("line {i}\n")).collect();
        let out = diff(&big, &big.replace("line 7\n", "line seven\n"));
        assert!(out.starts_with("(too large to diff"), "{}", &out[..80]);
        assert_eq!(out.lines().count(), 1 + 3000 + 3000);
    }
}
