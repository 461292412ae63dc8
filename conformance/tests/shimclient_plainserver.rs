//! Only the client shimmed: it finds no shimmed listener and must fall back to
//! TCP (path=tcp reason=no-shim-listener), the data intact.
//!
//! Runs every scenario of `util/scenarios.rs` with the client shimmed and the
//! server plain.

#[macro_use]
mod util;

use util::Combo;
use util::Side::{Plain, Shim};

combination_tests! {
    Combo { client: Shim, server: Plain };
    shimclient_plainserver_stream_1gib => stream_1gib,
    shimclient_plainserver_stream_ipv6 => stream_ipv6,
    shimclient_plainserver_stream_prefork_server => stream_prefork_server,
    shimclient_plainserver_stream_forkconn_server => stream_forkconn_server,
    shimclient_plainserver_stream_8_threads_x_8_conns => stream_8_threads_x_8_conns,
    shimclient_plainserver_stream_many_small_conns => stream_many_small_conns,
    shimclient_plainserver_rust_client_c_server => rust_client_c_server,
    shimclient_plainserver_c_client_rust_server => c_client_rust_server,
    shimclient_plainserver_kill_server_while_client_reads => kill_server_while_client_reads,
    shimclient_plainserver_kill_server_while_client_writes => kill_server_while_client_writes,
    shimclient_plainserver_kill_client_while_server_reads => kill_client_while_server_reads,
    shimclient_plainserver_kill_client_while_server_writes => kill_client_while_server_writes,
    shimclient_plainserver_threads_share_one_socket => threads_share_one_socket,
    shimclient_plainserver_socat_file_transfer => socat_file_transfer,
    shimclient_plainserver_iperf3_file_transfer => iperf3_file_transfer,
}
