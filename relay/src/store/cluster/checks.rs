//! The start-up checks of the cluster store: what the durability promise rests on, checked on
//! every primary, each failure with a message that says what to fix.

/// Why the cluster store cannot start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No node list was given.
    #[error(
        "the cluster store needs the cluster's nodes: give cluster_nodes (settings file), SEALPOST_CLUSTER_NODES or --cluster-nodes as HOST:PORT,..."
    )]
    NoNodes,
    /// Cluster mode keeps mailbox secrets in Valkey, so only sealed.
    #[error(
        "the cluster store keeps mailbox secrets in Valkey and needs the master key to seal them: give --master-key-file or SEALPOST_MASTER_KEY"
    )]
    MasterKeyRequired,
    /// No node answered.
    #[error(
        "cannot reach the Valkey cluster at {nodes}: {why}. Check that the nodes run (deploy/valkey/cluster.sh status) and that cluster_nodes names them"
    )]
    Unreachable {
        /// The nodes tried.
        nodes: String,
        /// The last failure.
        why: String,
    },
    /// The cluster does not serve every slot.
    #[error(
        "the Valkey cluster at {node} reports {state}, not cluster_state:ok: wait until every slot is served (CLUSTER INFO), or repair the cluster (valkey-cli --cluster fix)"
    )]
    NotOk {
        /// The node asked.
        node: String,
        /// Its cluster_state line.
        state: String,
    },
    /// A primary is too old for WAITAOF.
    #[error(
        "Valkey/Redis {version} on {node} lacks WAITAOF (needs 7.2 or later): install Valkey 8 (deploy/valkey/install.sh)"
    )]
    NoWaitAof {
        /// The node.
        node: String,
        /// Its version.
        version: String,
    },
    /// A primary does not fsync every write, so WAITAOF would not mean what the store needs.
    #[error(
        "{node} runs with appendonly {appendonly} and appendfsync {appendfsync}: the cluster store acknowledges a deposit only once it is fsynced on two nodes, which needs appendonly yes and appendfsync always on every node (CONFIG SET appendfsync always, and in valkey.conf)"
    )]
    NotFsyncing {
        /// The node.
        node: String,
        /// Its appendonly setting.
        appendonly: String,
        /// Its appendfsync setting.
        appendfsync: String,
    },
    /// A node answered something the store does not understand.
    #[error("unexpected answer from {node} to {command}: {what}")]
    Unexpected {
        /// The node.
        node: String,
        /// The command.
        command: &'static str,
        /// What came back.
        what: String,
    },
}

/// The value of `field` in an INFO-style `field:value` text.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
    })
}

/// Checks `CLUSTER INFO`'s answer.
pub fn check_cluster_state(node: &str, info: &str) -> Result<(), ClusterError> {
    match info_field(info, "cluster_state") {
        Some("ok") => Ok(()),
        other => Err(ClusterError::NotOk {
            node: node.into(),
            state: format!("cluster_state:{}", other.unwrap_or("(missing)")),
        }),
    }
}

/// Checks `INFO server`'s answer for a version with WAITAOF (Redis 7.2; every Valkey).
pub fn check_version(node: &str, info: &str) -> Result<(), ClusterError> {
    if info_field(info, "valkey_version").is_some() {
        return Ok(());
    }
    let version = info_field(info, "redis_version").unwrap_or("(unknown)");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (7, 2) {
        Ok(())
    } else {
        Err(ClusterError::NoWaitAof {
            node: node.into(),
            version: version.into(),
        })
    }
}

/// Checks `CONFIG GET appendonly appendfsync`'s answer (name, value pairs).
pub fn check_fsync(node: &str, config: &[(String, String)]) -> Result<(), ClusterError> {
    let get = |name: &str| {
        config
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| "(missing)".to_owned(), |(_, v)| v.clone())
    };
    let (appendonly, appendfsync) = (get("appendonly"), get("appendfsync"));
    if appendonly == "yes" && appendfsync == "always" {
        Ok(())
    } else {
        Err(ClusterError::NotFsyncing {
            node: node.into(),
            appendonly,
            appendfsync,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn fsync_must_be_always_with_an_append_only_file() {
        assert!(
            check_fsync(
                "n",
                &pairs(&[("appendonly", "yes"), ("appendfsync", "always")])
            )
            .is_ok()
        );
        let e = check_fsync(
            "n:1",
            &pairs(&[("appendfsync", "everysec"), ("appendonly", "yes")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("n:1") && e.contains("everysec") && e.contains("CONFIG SET"),
            "{e}"
        );
        assert!(
            check_fsync(
                "n",
                &pairs(&[("appendonly", "no"), ("appendfsync", "always")])
            )
            .is_err()
        );
        assert!(check_fsync("n", &[]).is_err());
    }

    #[test]
    fn versions_without_waitaof_are_refused() {
        assert!(
            check_version(
                "n",
                "# Server\r\nredis_version:7.2.4\r\nvalkey_version:8.0.1\r\n"
            )
            .is_ok()
        );
        assert!(check_version("n", "redis_version:7.2.0\r\n").is_ok());
        let e = check_version("n", "redis_version:7.0.15\r\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("7.0.15") && e.contains("WAITAOF"), "{e}");
    }

    #[test]
    fn cluster_state_must_be_ok() {
        assert!(
            check_cluster_state("n", "cluster_state:ok\r\ncluster_slots_assigned:16384\r\n")
                .is_ok()
        );
        let e = check_cluster_state("n", "cluster_state:fail\r\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster_state:fail"), "{e}");
    }
}
