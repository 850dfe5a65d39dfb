//! Runs the backend-independent conformance suite against a real redis-server (AOF on,
//! `appendfsync always`) started by the testkit, one server per test.

use tern_store::Store;
use tern_store_conformance::Fixture;
use tern_store_redis::{RedisStore, RedisStoreConfig};
use tern_testkit::RedisServer;

/// A store on its own durable redis-server (the server dies with the fixture).
struct Setup {
    store: RedisStore,
    _server: RedisServer,
}

impl Fixture for Setup {
    fn store(&self) -> &dyn Store {
        &self.store
    }
}

async fn setup() -> Setup {
    let server = tokio::task::spawn_blocking(RedisServer::start).await.unwrap().unwrap();
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    Setup { store, _server: server }
}

tern_store_conformance::conformance_tests!(setup);
tern_store_conformance::group_conformance_tests!(setup);
tern_store_conformance::flags_conformance_tests!(setup);
tern_store_conformance::device_conformance_tests!(setup);

/// The whole suite twice on one shared server, as dispatch workers share it: cases use unique
/// ids, so a second run over the first one's data must pass too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_twice_on_one_server() {
    let setup = setup().await;
    tern_store_conformance::run_all(setup.store()).await;
    tern_store_conformance::run_all_groups(setup.store()).await;
    tern_store_conformance::run_all_flags(setup.store()).await;
    tern_store_conformance::run_all_devices(setup.store()).await;
    tern_store_conformance::run_all(setup.store()).await;
    tern_store_conformance::run_all_groups(setup.store()).await;
    tern_store_conformance::run_all_flags(setup.store()).await;
    tern_store_conformance::run_all_devices(setup.store()).await;
}
