//! Stats: per-container resource use and node totals for placement.

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::{InspectContainerOptions, StatsOptions};
use futures::{StreamExt, TryStreamExt};
use kisara_core::model::{ContainerStats, LabelFilter, NodeStats};
use kisara_core::{Error, Result};

use crate::runtime::DockerRuntime;

/// CPU in thousandths of a CPU between the two samples of `stats`.
fn cpu_millis(stats: &ContainerStatsResponse) -> u64 {
    let (Some(now), Some(before)) = (&stats.cpu_stats, &stats.precpu_stats) else {
        return 0;
    };
    let usage = |s: &bollard::models::ContainerCpuStats| {
        s.cpu_usage
            .as_ref()
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let cpu_delta = usage(now).saturating_sub(usage(before));
    let system_delta = now
        .system_cpu_usage
        .unwrap_or(0)
        .saturating_sub(before.system_cpu_usage.unwrap_or(0));
    let cpus = u64::from(now.online_cpus.unwrap_or(1).max(1));
    if system_delta == 0 {
        return 0;
    }
    u64::try_from(u128::from(cpu_delta) * u128::from(cpus) * 1000 / u128::from(system_delta))
        .unwrap_or(u64::MAX)
}

/// Memory in use without the page cache, as `docker stats` shows it.
fn memory_used(stats: &ContainerStatsResponse) -> u64 {
    let Some(memory) = &stats.memory_stats else {
        return 0;
    };
    let usage = memory.usage.unwrap_or(0);
    let cache = memory
        .stats
        .as_ref()
        .and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
                .or_else(|| s.get("cache"))
        })
        .copied()
        .unwrap_or(0);
    usage.saturating_sub(cache)
}

impl DockerRuntime {
    async fn raw_stats(&self, container: &str) -> Result<ContainerStatsResponse> {
        let mut stream = self.docker.stats(
            container,
            Some(StatsOptions {
                stream: false,
                one_shot: false,
            }),
        );
        match stream.next().await {
            Some(Ok(stats)) => Ok(stats),
            Some(Err(e)) => Err(self.err(e, "container", container)),
            None => Err(Error::not_found("container", container)),
        }
    }

    pub(crate) async fn container_stats_impl(&self, container: &str) -> Result<ContainerStats> {
        let (inspected, stats) = futures::try_join!(
            async {
                self.docker
                    .inspect_container(container, None::<InspectContainerOptions>)
                    .await
                    .map_err(|e| self.err(e, "container", container))
            },
            self.raw_stats(container)
        )?;
        let limit = inspected
            .host_config
            .and_then(|h| h.memory)
            .and_then(|m| u64::try_from(m).ok())
            .filter(|m| *m > 0)
            .or_else(|| stats.memory_stats.as_ref().and_then(|m| m.limit))
            .unwrap_or(0);
        let (rx, tx) = stats
            .networks
            .iter()
            .flatten()
            .fold((0, 0), |(rx, tx), (_, n)| {
                (rx + n.rx_bytes.unwrap_or(0), tx + n.tx_bytes.unwrap_or(0))
            });
        Ok(ContainerStats {
            cpu_millis: cpu_millis(&stats),
            memory_bytes: memory_used(&stats),
            memory_limit_bytes: limit,
            pids: stats
                .pids_stats
                .as_ref()
                .and_then(|p| p.current)
                .unwrap_or(0),
            network_rx_bytes: rx,
            network_tx_bytes: tx,
        })
    }

    pub(crate) async fn node_stats_impl(&self) -> Result<NodeStats> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.err(e, "engine", &self.endpoint))?;
        let running = self.list_summaries(&LabelFilter::managed(), false).await?;
        let ids: Vec<String> = running.into_iter().filter_map(|c| c.id).collect();
        let this = self.clone();
        let samples: Vec<Option<ContainerStats>> = futures::stream::iter(ids)
            .map(move |id| {
                let this = this.clone();
                async move {
                    match this.container_stats_impl(&id).await {
                        Ok(s) => Ok(Some(s)),
                        Err(Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(32)
            .try_collect()
            .await?;
        let samples: Vec<ContainerStats> = samples.into_iter().flatten().collect();
        let cpus = u64::try_from(info.ncpu.unwrap_or(1).max(1)).unwrap_or(1);
        let mem_total = u64::try_from(info.mem_total.unwrap_or(0)).unwrap_or(0);
        let cpu_used: u64 = samples.iter().map(|s| s.cpu_millis).sum();
        let mem_used: u64 = samples.iter().map(|s| s.memory_bytes).sum();
        Ok(NodeStats {
            containers: u32::try_from(samples.len()).unwrap_or(u32::MAX),
            bandwidth_in: 0,
            bandwidth_out: 0,
            cpu: (cpu_used as f64 / (cpus * 1000) as f64).clamp(0.0, 1.0),
            memory: if mem_total == 0 {
                0.0
            } else {
                (mem_used as f64 / mem_total as f64).clamp(0.0, 1.0)
            },
        })
    }
}
