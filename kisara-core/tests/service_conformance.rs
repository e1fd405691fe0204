//! The `Service` conformance suite against a real TCP service and a `Pool`
//! of them, and proof that its cases catch services that break the
//! contract.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use kisara_core::lifecycle::{Pool, Service, ServiceContext};
use kisara_core::testing::service::{self, ServiceFixture, Visit};
use kisara_core::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GREETING: &[u8] = b"hello\n";
/// How long a probe waits for the greeting.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// How a [`Greeter`] breaks the contract, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// Returns when asked to stop but leaves its accept loop running.
    KeepsServing,
    /// Blocks its thread for a second while starting.
    BlocksThread,
    /// Fails before it is ready.
    CrashesAtStart,
}

/// Greets every connection on a loopback port until asked to stop.
struct Greeter {
    listener: Mutex<Option<TcpListener>>,
    flaw: Flaw,
}

impl Greeter {
    /// A greeter on a free loopback port, and the port's address.
    async fn bind(flaw: Flaw) -> (Arc<Self>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let greeter = Self {
            listener: Mutex::new(Some(listener)),
            flaw,
        };
        (Arc::new(greeter), address)
    }
}

#[async_trait]
impl Service for Greeter {
    fn name(&self) -> &str {
        "greeter"
    }

    async fn run(&self, ctx: ServiceContext) -> Result<()> {
        let listener = self
            .listener
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Error::conflict("a greeter runs once"))?;
        if self.flaw == Flaw::CrashesAtStart {
            return Err(Error::unavailable("the greeter could not start"));
        }
        if self.flaw == Flaw::BlocksThread {
            std::thread::sleep(Duration::from_secs(1));
        }
        ctx.running();
        let serving = async move {
            loop {
                if let Ok((mut stream, _)) = listener.accept().await {
                    let _ = stream.write_all(GREETING).await;
                }
            }
        };
        if self.flaw == Flaw::KeepsServing {
            tokio::spawn(serving);
            ctx.stop_requested().await;
            return Ok(());
        }
        tokio::select! {
            () = ctx.stop_requested() => Ok(()),
            () = serving => Ok(()),
        }
    }
}

/// Connects to `address` and reads the greeting; the open connection is
/// the visit.
async fn greeted(address: SocketAddr) -> std::result::Result<TcpStream, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect to {address}: {e}"))?;
    let mut greeting = [0; GREETING.len()];
    match tokio::time::timeout(PROBE_WAIT, stream.read_exact(&mut greeting)).await {
        Ok(Ok(_)) if greeting == GREETING => Ok(stream),
        Ok(Ok(_)) => Err(format!("{address} sent {greeting:?}, not the greeting")),
        Ok(Err(e)) => Err(format!("read from {address}: {e}")),
        Err(_) => Err(format!("no greeting from {address} within {PROBE_WAIT:?}")),
    }
}

async fn greeter(flaw: Flaw) -> ServiceFixture {
    let (greeter, address) = Greeter::bind(flaw).await;
    ServiceFixture::new(greeter, move || async move {
        greeted(address)
            .await
            .map(|stream| Box::new(stream) as Visit)
    })
}

#[tokio::test]
async fn a_tcp_service_passes_the_service_suite() {
    service::all(|| greeter(Flaw::None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_passes_the_service_suite() {
    service::all(|| async {
        let (first, first_address) = Greeter::bind(Flaw::None).await;
        let (second, second_address) = Greeter::bind(Flaw::None).await;
        let pool = Pool::new("greeters")
            .with_service(first)
            .with_service(second);
        // The pool serves when both members do.
        ServiceFixture::new(Arc::new(pool), move || async move {
            let first = greeted(first_address).await?;
            let second = greeted(second_address).await?;
            Ok(Box::new((first, second)) as Visit)
        })
    })
    .await;
}

/// Runs the case called `name` on `fixture` and returns its panic message.
async fn failure_of(name: &str, fixture: ServiceFixture) -> String {
    let case = service::CASES
        .iter()
        .find(|case| case.name == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    let panic = AssertUnwindSafe((case.run)(fixture))
        .catch_unwind()
        .await
        .expect_err("the case passed a service that breaks it");
    panic.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_service_still_serving_after_its_run_returned_fails() {
    let message = failure_of(
        "serves_no_more_once_stopped",
        greeter(Flaw::KeepsServing).await,
    )
    .await;
    assert!(message.contains("still serves"), "{message}");
}

#[tokio::test]
async fn a_service_blocking_its_thread_fails() {
    let message = failure_of(
        "never_blocks_the_runtime",
        greeter(Flaw::BlocksThread).await,
    )
    .await;
    assert!(
        message.contains("kept another task from running"),
        "{message}"
    );
}

#[tokio::test]
async fn a_service_crashing_before_ready_fails_naming_its_error() {
    let message = failure_of(
        "reports_ready_then_serves",
        greeter(Flaw::CrashesAtStart).await,
    )
    .await;
    assert!(
        message.contains("ended before it reported ready") && message.contains("could not start"),
        "{message}"
    );
}
