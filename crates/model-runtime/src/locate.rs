//! Where the runtime library is looked for, in order: the configured path
//! or else the environment variable (either, when set, is the only place
//! tried), next to the binary, the `runtime/<arch>/` folder of the checkout
//! the binary is in, the packaged location, then the system linker path.

use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable naming the runtime library to load.
pub const ENV_LIBRARY: &str = "EDGE_INFER_RUNTIME_LIBRARY";

/// Where the packaged daemon keeps its runtime library.
const PACKAGED_DIR: &str = "/usr/lib/edge-infer";

const LITERT_NAME: &str = "libLiteRt.so";
const CLASSIC_NAME: &str = "libtensorflowlite_c.so";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryCandidate {
    pub path: PathBuf,
    /// Why this path was tried, e.g. "config runtime.library".
    pub source: &'static str,
}

/// The inputs of the search; [`LibrarySearch::candidates`] turns them into
/// the ordered list of paths to try.
#[derive(Debug, Clone, Default)]
pub struct LibrarySearch {
    pub configured: Option<PathBuf>,
    pub from_env: Option<PathBuf>,
    pub exe_dir: Option<PathBuf>,
}

impl LibrarySearch {
    /// The search a daemon process does: config value, `$EDGE_INFER_RUNTIME_LIBRARY`,
    /// the folders around its own executable.
    pub fn for_process(configured: Option<PathBuf>) -> LibrarySearch {
        let from_env = std::env::var_os(ENV_LIBRARY)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        LibrarySearch {
            configured,
            from_env,
            exe_dir,
        }
    }

    pub fn candidates(&self) -> Vec<LibraryCandidate> {
        let mut out = Vec::new();
        if let Some(p) = &self.configured {
            out.push(LibraryCandidate {
                path: p.clone(),
                source: "config runtime.library",
            });
            // An explicit choice is final: silently loading some other
            // library would hide a typo in the config.
            return out;
        }
        if let Some(p) = &self.from_env {
            out.push(LibraryCandidate {
                path: p.clone(),
                source: "environment EDGE_INFER_RUNTIME_LIBRARY",
            });
            return out;
        }
        // armv7 has no LiteRT build: there the places the daemon owns hold
        // the classic library.
        let own = if host_arch() == "armv7" {
            CLASSIC_NAME
        } else {
            LITERT_NAME
        };
        if let Some(dir) = &self.exe_dir {
            out.push(LibraryCandidate {
                path: dir.join(own),
                source: "next to the executable",
            });
            // target/<profile>/edge-infer or target/<triple>/<profile>/edge-infer
            // inside a checkout: the fetch script's runtime/<arch>/ folder.
            for ancestor in dir.ancestors().skip(1).take(4) {
                let p = ancestor.join("runtime").join(host_arch()).join(own);
                if p.exists() {
                    out.push(LibraryCandidate {
                        path: p,
                        source: "project runtime/ folder",
                    });
                    break;
                }
            }
        }
        out.push(LibraryCandidate {
            path: Path::new(PACKAGED_DIR).join(own),
            source: "packaged location",
        });
        for name in [LITERT_NAME, CLASSIC_NAME] {
            out.push(LibraryCandidate {
                path: PathBuf::from(name),
                source: "system linker path",
            });
        }
        out
    }

    /// What to tell the operator when nothing loaded.
    pub fn hint(&self) -> String {
        hint_for(host_arch())
    }
}

/// The hint for a machine of architecture `arch` (as [`host_arch`] names it).
fn hint_for(arch: &str) -> String {
    if arch == "armv7" {
        "no LiteRT build exists for armv7: install the TensorFlow Lite C library \
         (libtensorflowlite_c.so) that the board's OS or vendor provides, then set \
         `library = \"/path/to/libtensorflowlite_c.so\"` under [runtime] in the config \
         (or EDGE_INFER_RUNTIME_LIBRARY=/path/to/libtensorflowlite_c.so), or put it next to \
         the edge-infer binary or in /usr/lib/edge-infer"
            .to_string()
    } else {
        format!(
            "fetch libLiteRt.so with `scripts/fetch-runtime.sh {arch}` (from the ai-edge-litert wheel) \
             and put it next to the edge-infer binary or in {PACKAGED_DIR}, \
             or set [runtime] library (or EDGE_INFER_RUNTIME_LIBRARY) to its path"
        )
    }
}

impl fmt::Display for LibraryCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.source)
    }
}

/// The architecture name the fetch script uses for `runtime/<arch>/`.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        "arm" => "armv7",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_is_the_only_candidate() {
        let s = LibrarySearch {
            configured: Some("/opt/x/libLiteRt.so".into()),
            from_env: Some("/env/lib.so".into()),
            exe_dir: Some("/usr/bin".into()),
        };
        let c = s.candidates();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].source, "config runtime.library");
    }

    #[test]
    fn default_search_ends_on_the_system_path() {
        let s = LibrarySearch {
            configured: None,
            from_env: None,
            exe_dir: Some("/nonexistent/bin".into()),
        };
        let c = s.candidates();
        assert_eq!(c[0].path, PathBuf::from("/nonexistent/bin/libLiteRt.so"));
        assert_eq!(
            c.last().map(|c| c.path.clone()),
            Some(PathBuf::from(CLASSIC_NAME))
        );
        assert!(s.hint().contains("libLiteRt.so") || s.hint().contains("armv7"));
    }

    #[test]
    fn the_armv7_hint_says_how_to_point_the_config_at_the_classic_library() {
        let armv7 = hint_for("armv7");
        assert!(
            armv7.contains("no LiteRT build exists for armv7"),
            "{armv7}"
        );
        assert!(
            armv7.contains("library = \"/path/to/libtensorflowlite_c.so\"` under [runtime]"),
            "{armv7}"
        );
        assert!(armv7.contains("EDGE_INFER_RUNTIME_LIBRARY="), "{armv7}");
        let aarch64 = hint_for("aarch64");
        assert!(
            aarch64.contains("scripts/fetch-runtime.sh aarch64"),
            "{aarch64}"
        );
        assert!(aarch64.contains("/usr/lib/edge-infer"), "{aarch64}");
    }
}
