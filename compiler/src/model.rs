//! `model`: the typed Rust view of what the stdlib's `stackc.stack` lowers a
//! stack to. Maps are `BTreeMap`, so every walk over them is sorted.
//!
//! The Nickel contracts already checked the user's options; this layer only
//! fixes the shape the compiler relies on, so a stack that bypasses
//! `stackc.stack` gets one clear diagnostic instead of a crash.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::diag::{Code, Diagnostic};

/// Version of the lowered form this compiler reads (`stackc.output_version`).
pub const OUTPUT_VERSION: u64 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    pub stackc: Meta,
    pub name: String,
    pub secrets: SecretsOptions,
    /// Every network, with the implicit `default` of a stack without any.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    pub machines: BTreeMap<String, Machine>,
}

/// The stack's `secrets` options: how derived secrets are scoped, and which
/// come from encrypted files in the project instead.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsOptions {
    /// `v1` or `v2` (the stdlib's contract allows nothing else).
    pub scheme: String,
    pub scope: String,
    /// Derived secrets adopted from files (`<dir>/<name>.age`).
    pub external: Vec<String>,
    /// Relative to the stack file's folder.
    pub dir: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub cidr: String,
    pub public: bool,
    pub prefer: f64,
}

impl Machine {
    /// Whether `host` is one of the machine's addresses.
    pub fn has_address(&self, host: &str) -> bool {
        self.address == host || self.addresses.values().any(|a| a == host)
    }
}

/// A container's bind mount of a bundle path (`source`, relative to the
/// machine's folder) and the `uid:gid` the container runs as.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub service: String,
    pub source: String,
    pub user: String,
}

impl Mount {
    /// Whether the mount holds bundle path `path` (the source itself, or a
    /// file below it).
    pub fn covers(&self, path: &str) -> bool {
        path == self.source
            || path
                .strip_prefix(self.source.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// `(uid, gid)` from `user`, if it is numeric `uid:gid`.
    pub fn owner(&self) -> Option<(u32, u32)> {
        let (u, g) = self.user.split_once(':')?;
        Some((u.parse().ok()?, g.parse().ok()?))
    }
}

/// A source a firewall opening names, as written, and whether it names
/// addresses the stack knows (`lower` derives these from the options).
#[derive(Debug)]
pub struct Opening {
    pub source: String,
    pub port: u16,
    pub protocol: String,
    pub ssh: bool,
    pub resolved: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub output_version: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// The address DNS records use ("" if the machine has none).
    pub address: String,
    /// The machine's address on each network it is on.
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
    /// Derived by `lower` from the machine's `firewall` options.
    #[serde(skip)]
    pub openings: Vec<Opening>,
    /// Bind mounts of the machine's containers, with the user each runs as.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    pub deploy_root: String,
    /// Set when the machine is a Kubernetes namespace (its name).
    #[serde(default)]
    pub namespace: Option<String>,
    /// A namespace's `kubernetes.secret_manifests`: `plain` or `sops`
    /// (secrets/sops.rs).
    #[serde(default)]
    pub secret_manifests: Option<String>,
    /// A namespace's workloads by name, with their mounts in compose's
    /// `src:dst` form (the pods mount the same paths).
    #[serde(default)]
    pub workloads: BTreeMap<String, Workload>,
    #[serde(default)]
    pub listens: Vec<Listen>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Addresses of the proxy's sites: `host` or `host:port`.
    #[serde(default)]
    pub sites: Vec<String>,
    /// What each proxy site does with a request path, as its module lowers
    /// the proxy's rules (`xref::router` follows them).
    #[serde(default)]
    pub site_routes: Vec<SiteRoutes>,
    #[serde(default)]
    pub units: Vec<String>,
    /// What each service's files say to other services (see `xref::roles`).
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Start-up rules of the machine's programs that failed (SC0601).
    #[serde(default)]
    pub assertions: Vec<Assertion>,
    pub files: BTreeMap<String, FileSpec>,
    /// The user's native services, as their contract checked them: `lower`
    /// writes their files into `files`, then empties this.
    #[serde(default)]
    pub native: BTreeMap<String, NativeService>,
    /// The reverse proxy whose sites' blocks `lower` writes, with their
    /// route facts and handlers (none on Kubernetes).
    #[serde(default)]
    pub proxy: Option<Proxy>,
    /// The machine's containers by name (with `native`'s keys: the services
    /// a site's upstream can name).
    #[serde(default)]
    pub container_names: Vec<String>,
    /// Native services a module runs for the machine (a proxy without a
    /// container): lowered the same way.
    #[serde(default)]
    pub module_native: BTreeMap<String, NativeService>,
    /// What `lower` writes the machine's nftables ruleset from (none on
    /// Kubernetes).
    #[serde(default)]
    pub firewall: Option<Firewall>,
    /// Fields merged on the result of `stackc.stack` for a file the
    /// compiler writes (an entry of `files` without `format`): `lower`
    /// applies them over the file it writes, leaf by leaf.
    #[serde(default)]
    pub file_overrides: BTreeMap<String, serde_json::Value>,
}

/// A machine's `firewall` options and what the ruleset is written from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    pub options: FirewallOptions,
    /// The stack's `admin_sources`: SSH's sources unless it names its own.
    pub admin_sources: Vec<String>,
    /// `{ source, protocol, port }`: ports other machines reach (proxy
    /// routes, declared connections), opened to their address only;
    /// derived by `lower` from every machine's routes and roles.
    #[serde(skip)]
    pub incoming: Vec<serde_json::Value>,
    /// `{ protocol, port }`: host ports the machine's containers reach.
    pub container_access: Vec<serde_json::Value>,
    /// Whether the stack declares `networks` (else one implicit network,
    /// `default`, spans everything).
    pub networks_declared: bool,
}

/// `Firewall` in `modules/firewall.ncl`, defaults filled in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallOptions {
    pub enable: bool,
    pub extra_tcp_ports: Vec<u16>,
    pub extra_udp_ports: Vec<u16>,
    pub allow_ping: bool,
    pub ssh: SshOptions,
    pub allow: Vec<AllowOption>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshOptions {
    pub enable: bool,
    pub port: u16,
    #[serde(default)]
    pub from: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowOption {
    pub port: u16,
    pub protocol: Protocol,
    pub from: Vec<String>,
}

/// A native service's options (`NativeService` in `modules/native.ncl`),
/// defaults filled in. Free-form values stay JSON: they are copied into the
/// unit as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeService {
    pub description: Option<String>,
    pub documentation: Vec<serde_json::Value>,
    pub command: serde_json::Value,
    pub user: Option<String>,
    pub group: Option<String>,
    pub working_directory: Option<serde_json::Value>,
    pub state_directory: Option<String>,
    pub environment: serde_json::Map<String, serde_json::Value>,
    pub secret_environment: serde_json::Map<String, serde_json::Value>,
    pub ports: BTreeMap<String, NativePort>,
    pub schedule: Option<serde_json::Value>,
    pub restart: Restart,
    pub restart_sec: serde_json::Value,
    pub hardening: Hardening,
    pub read_write_paths: Vec<serde_json::Value>,
    pub capabilities: Vec<String>,
    /// Raw unit settings by section, applied last.
    pub unit: serde_json::Map<String, serde_json::Value>,
    // Read by the stdlib (monitoring, roles, assertions), not by `lower`.
    #[serde(default)]
    pub metrics: serde::de::IgnoredAny,
    #[serde(default)]
    pub roles: serde::de::IgnoredAny,
    #[serde(default)]
    pub assertions: serde::de::IgnoredAny,
}

/// `Restart=` of a native service. Enums, not strings: a value forced
/// past the contract on the result of `stackc.stack` is refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    Always,
    OnFailure,
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hardening {
    Strict,
    None,
}

/// A native service's port, from which `lower` derives its listen fact
/// (and a port below 1024 needs `CAP_NET_BIND_SERVICE`); also a proxy's
/// own ports (`public` and `container_port` only there).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativePort {
    pub port: u16,
    #[serde(default)]
    pub to: Option<u16>,
    pub protocol: Protocol,
    pub bind: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub container_port: Option<u16>,
}

/// One value as a service reads it, named by a module (`modules/roles.ncl`):
/// exactly one operation is set (the Nickel contract sees to it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ref {
    /// With `ptr`: a YAML/JSON file of the machine.
    pub file: Option<String>,
    pub ptr: Option<String>,
    pub env: Option<String>,
    pub value: Option<serde_json::Value>,
    pub join: Option<Vec<Ref>>,
    pub concat: Option<Vec<Ref>>,
    pub dir: Option<Box<Ref>>,
    pub first: Option<Vec<Ref>>,
    pub read: Option<Box<Ref>>,
    pub map: Option<Box<RefMap>>,
    /// A JSON document held in a string, and a pointer into it.
    pub json: Option<Box<RefJson>>,
    /// The body a proxy site answers for a path (`respond`).
    pub respond: Option<Box<RefRespond>>,
    /// `give` when `test` is `true`, else nothing.
    pub when: Option<Box<RefWhen>>,
    /// What follows the first `skip` fields separated by `sep` (a pgpass
    /// line's password).
    pub split: Option<Box<RefSplit>>,
    /// The address of a machine of the stack (by name): the one DNS
    /// records use, on its public network when it has one.
    pub address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefSplit {
    pub of: Ref,
    pub sep: String,
    pub skip: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefJson {
    pub of: Ref,
    pub ptr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefRespond {
    pub site: Ref,
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefWhen {
    pub test: Ref,
    pub give: Ref,
}

/// `{ map = { of, to } }`: a value looked up in a table (keys compared
/// without case), such as a setting's spelling of an auth method.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefMap {
    pub of: Ref,
    pub to: BTreeMap<String, serde_json::Value>,
}

/// A failed start-up rule a module keeps next to its options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub service: String,
    pub message: String,
    pub help: String,
    pub at: Option<Ref>,
    /// A more precise code than SC0601, when the module names one.
    #[serde(default)]
    pub code: Option<String>,
    /// The option value the rule is about; only its position is used.
    #[serde(default)]
    pub origin: Option<serde_json::Value>,
}

/// A client an OpenID Connect provider knows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderClient {
    pub at: Ref,
    pub id: Ref,
    pub redirect_uris: Ref,
    pub secret: Option<Ref>,
    pub auth_method: Ref,
    pub id_token_claims: Option<Ref>,
    /// The scopes the client may request.
    #[serde(default)]
    pub scopes: Option<Ref>,
    /// The client's options as the user gave them; only positions are used.
    #[serde(default)]
    pub origin: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredClaim {
    pub claim: String,
    pub at: Ref,
}

/// A role a service's files play, as `modules/roles.ncl` lowers it.
// One list of roles per machine, read once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Role {
    OidcProvider {
        service: String,
        name: String,
        served_path: Option<Ref>,
        /// Its endpoint paths below the issuer (discovery, authorization, token, …).
        #[serde(default)]
        paths: Vec<String>,
        #[serde(default)]
        clients: Vec<ProviderClient>,
    },
    OidcClient {
        service: String,
        name: String,
        what: String,
        client_id: Ref,
        issuer: Option<Ref>,
        #[serde(default)]
        provider_urls: Vec<Ref>,
        callback: Ref,
        secret: Option<Ref>,
        auth_method: Option<Ref>,
        #[serde(default)]
        required_claims: Vec<RequiredClaim>,
        /// The scopes it requests (an array, or a space-separated string).
        scopes: Option<Ref>,
    },
    Listener {
        service: String,
        name: String,
        port: Ref,
        bind: Option<Ref>,
        resources: Option<Ref>,
    },
    Endpoint {
        service: String,
        name: String,
        what: String,
        url: Ref,
        target: String,
        target_machine: Option<String>,
        /// The port of `target` by name (opened by the firewall across machines).
        target_port: Option<String>,
        #[serde(default)]
        needs: Vec<String>,
        /// Called by clients and other servers on the internet, not by the service.
        #[serde(default)]
        public: bool,
        code: Option<String>,
        help: Option<String>,
    },
    Share {
        service: String,
        name: String,
        what: String,
        mine: Ref,
        /// The other service (absent: `theirs` is read as this one's).
        target: Option<String>,
        target_machine: Option<String>,
        theirs: Ref,
        #[serde(default)]
        secret: bool,
        code: Option<String>,
        /// `exact`, `base` (a final `/` does not count) or `url` (`mine` as
        /// URL libraries serialise it: a bare origin gets its `/`).
        #[serde(default)]
        compare: Option<String>,
        help: Option<String>,
    },
    DbServer {
        service: String,
        name: String,
        /// What labels point at (its first-start script).
        at: Option<Ref>,
        #[serde(default)]
        databases: Vec<DbDatabase>,
        #[serde(default)]
        logins: Vec<DbLogin>,
    },
    DbClient {
        service: String,
        name: String,
        what: String,
        /// The server it must reach, when declared.
        target: Option<String>,
        target_machine: Option<String>,
        target_port: Option<String>,
        /// `postgres://user:password@host:port/database` or `tcp://host:port`.
        url: Option<Ref>,
        host: Option<Ref>,
        port: Option<Ref>,
        database: Option<Ref>,
        user: Option<Ref>,
        password: Option<Ref>,
    },
    /// A path the service's config names, that must exist where it looks.
    FileNamed { service: String, name: String, path: Ref },
    /// A URL clients or other servers are given: https, and served by a
    /// proxy site with a publicly trusted certificate (`ours`: the stack
    /// must serve it).
    PublicUrl {
        service: String,
        name: String,
        url: Ref,
        #[serde(default = "yes")]
        ours: bool,
    },
    /// Lines every line of a file (as the service sees it) must match.
    Lines {
        service: String,
        name: String,
        what: String,
        path: Ref,
        must: String,
        must_not: Option<String>,
        help: String,
        code: Option<String>,
    },
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbDatabase {
    pub name: Ref,
    pub owner: Ref,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbLogin {
    pub name: Ref,
    pub password: Option<Ref>,
}

impl Role {
    /// The service whose files play the role.
    pub fn service(&self) -> &str {
        match self {
            Role::OidcProvider { service, .. }
            | Role::OidcClient { service, .. }
            | Role::Listener { service, .. }
            | Role::Endpoint { service, .. }
            | Role::Share { service, .. }
            | Role::DbServer { service, .. }
            | Role::DbClient { service, .. }
            | Role::FileNamed { service, .. }
            | Role::PublicUrl { service, .. }
            | Role::Lines { service, .. } => service,
        }
    }

    /// A connection the service declares to a port of another service (an
    /// endpoint, or a database client naming its `target`), when it names
    /// the port (`target_port`): the firewall opens it, `plan` lists it,
    /// the checks find the port.
    pub fn connection(&self) -> Option<Connection<'_>> {
        let (service, name, target, machine, port) = match self {
            Role::Endpoint {
                service,
                name,
                target,
                target_machine,
                target_port: Some(port),
                ..
            }
            | Role::DbClient {
                service,
                name,
                target: Some(target),
                target_machine,
                target_port: Some(port),
                ..
            } => (service, name, target, target_machine, port),
            _ => return None,
        };
        Some(Connection {
            service,
            name,
            target,
            machine: machine.as_deref(),
            port,
        })
    }
}

/// See `Role::connection`.
pub struct Connection<'a> {
    pub service: &'a str,
    pub name: &'a str,
    pub target: &'a str,
    /// `target_machine`: the caller's own machine when `None`.
    pub machine: Option<&'a str>,
    pub port: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port a service listens on: the fact behind port, bind and firewall checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub service: String,
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub bind: String,
    pub public: bool,
    /// Published by docker (DNAT), not bound by a process on the machine.
    #[serde(default)]
    pub published: bool,
    /// Last port of a range that starts at `port`.
    #[serde(default)]
    pub to: Option<u16>,
    /// A container's port inside it, when it differs from the host's.
    #[serde(default)]
    pub container_port: Option<u16>,
}

impl Listen {
    /// The last port: `to` for a range, else `port`.
    pub fn last(&self) -> u16 {
        self.to.unwrap_or(self.port)
    }

    /// Listens on `port` (itself or inside its range).
    pub fn contains(&self, port: u16) -> bool {
        (self.port..=self.last()).contains(&port)
    }

    /// `port`, or `first-last` for a range.
    pub fn ports(&self) -> String {
        match self.to {
            Some(to) => format!("{}-{to}", self.port),
            None => self.port.to_string(),
        }
    }

    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.bind)
    }

    /// Bound to every address of the machine.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.bind.as_str(), "0.0.0.0" | "::")
    }

    /// A connection to `host` (an address of the machine, or loopback from
    /// the machine itself) lands on this listener's bind.
    pub fn answers(&self, host: &str) -> bool {
        answers(&self.bind, host)
    }

    /// Bound to one address that is not loopback (one network's).
    pub fn is_specific(&self) -> bool {
        !self.is_wildcard() && !self.is_loopback()
    }
}

pub fn is_loopback(addr: &str) -> bool {
    addr == "localhost" || addr == "::1" || addr.starts_with("127.")
}

/// A socket bound to `bind` accepts a connection to `host`: a wildcard bind
/// every address (`0.0.0.0` too, as stackc models it everywhere: compose
/// publishes on both families), any other bind its own address alone, by
/// value (`fd00:0::2` is `fd00::2`). `localhost` is either loopback.
pub fn answers(bind: &str, host: &str) -> bool {
    let strip = |a: &str| a.trim_start_matches('[').trim_end_matches(']').to_owned();
    let (bind, host) = (strip(bind), strip(host));
    if matches!(bind.as_str(), "0.0.0.0" | "::" | "") {
        return true;
    }
    if host == "localhost" {
        return answers(&bind, "127.0.0.1") || answers(&bind, "::1");
    }
    match (bind.parse::<std::net::IpAddr>(), host.parse::<std::net::IpAddr>()) {
        (Ok(b), Ok(h)) => b == h,
        _ => bind == host,
    }
}

/// A reverse proxy whose sites `lower` writes into its config file: the
/// file, the proxy's own service (its unit, or its compose service when
/// `in_container`) with the ports others may reach (metrics), and each
/// site's options as their contract checked them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    pub file: String,
    pub service: String,
    pub in_container: bool,
    pub ports: BTreeMap<String, NativePort>,
    pub sites: BTreeMap<String, Site>,
}

/// A proxy site's options (`Site` in the stdlib).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    #[serde(default)]
    pub upstream: Option<SiteUpstream>,
    pub routes: Vec<SiteRoute>,
    pub respond: BTreeMap<String, Response>,
    pub tls: SiteTls,
    /// Directives as the user wrote them, `{ name, args, body }`.
    pub directives: Vec<serde_json::Value>,
    /// Read by the Kubernetes lowering only.
    pub kubernetes: serde::de::IgnoredAny,
}

impl Site {
    /// Every upstream the site sends to, in order: its routes', then its
    /// default (`lib.site_upstreams`), with where each is written below the site.
    pub fn upstreams(&self) -> Vec<(&SiteUpstream, String)> {
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.upstream, format!("/routes/{i}/upstream")));
        routes
            .chain(self.upstream.iter().map(|u| (u, "/upstream".to_owned())))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteUpstream {
    pub service: String,
    pub port: String,
    /// The proxy's own machine when `None`.
    #[serde(default)]
    pub machine: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRoute {
    pub paths: Vec<String>,
    pub upstream: SiteUpstream,
    pub headers_up: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub body: String,
    pub status: serde_json::Number,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteTls {
    Acme,
    Internal,
}

/// A reverse-proxy site and the service port it forwards to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub site: String,
    pub machine: String,
    pub service: String,
    pub port: String,
}

/// The handlers of one proxy site, in the order the proxy tries them, and
/// the rule that picks one for a request path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRoutes {
    pub site: String,
    pub select: Select,
    /// Whether clients trust the site's certificate (not a local CA).
    #[serde(default = "yes")]
    pub trusted_tls: bool,
    /// The compose service the proxy runs in (`None`: on the host).
    pub container: Option<String>,
    /// Empty until `lower` reads them from the site's `block`, if it has one.
    #[serde(default)]
    pub handlers: Vec<Handler>,
    /// Where `lower::site_handlers` reads the handlers from, when the
    /// module leaves them to the compiler (Caddy).
    #[serde(default)]
    pub block: Option<SiteBlock>,
}

/// Where a site's handlers come from: its block in a config file of the
/// machine (`content.sites.<site>`), and the service behind each upstream
/// address the module wrote there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteBlock {
    pub file: String,
    pub targets: Vec<UpstreamTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTarget {
    /// `host:port`, as the block writes it.
    pub address: String,
    pub target: Upstream,
}

/// A service's port by name, on a machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub machine: String,
    pub service: String,
    pub port: String,
}

/// How a proxy picks a handler among those that match a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// The first in order (Caddy).
    First,
    /// An exact match, else the longest matching prefix; the first of equals
    /// (nginx locations, Ingress paths).
    MostSpecific,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handler {
    #[serde(rename = "match")]
    pub matcher: Matcher,
    pub then: Then,
}

/// Which paths a handler takes: any of `paths`, read as `kind` says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub kind: MatchKind,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// Every path.
    Any,
    /// The path itself.
    Exact,
    /// Paths starting with the string (nginx: `/api` takes `/apix`).
    Prefix,
    /// The path or paths under it, compared element by element on `/`
    /// (Ingress `Prefix`: `/api` takes `/api/x`, not `/apix`).
    PathPrefix,
    /// Caddy's path matcher: `*` at the end a prefix, at the start a
    /// suffix, at both a substring, elsewhere a glob within one segment.
    Glob,
}

/// What a handler does with a request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Then {
    /// Forwards it to a service.
    Proxy(ProxyTo),
    /// Answers it itself.
    Respond { status: u16, body: String },
    /// Serves files from a directory of the machine.
    Files(String),
    /// Something else, described for messages.
    Other(String),
}

/// Where a handler forwards to: the upstream as the proxy's config writes
/// it (`host:port`, followed as the proxy connects), or, without one, the
/// service and port name (an Ingress backend). `machine`, `service`, `port`
/// name what the module meant, when it wrote the upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTo {
    pub machine: Option<String>,
    pub service: Option<String>,
    pub port: Option<String>,
    pub upstream: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Systemd,
    Env,
    Caddyfile,
    Nftables,
    Lines,
    Json,
    /// YAML written by yaml_serde from the structured content (keys sorted).
    Yaml,
    /// A string written exactly as it is (secret files: no newline added).
    Raw,
    /// A docker compose file (YAML; `$` escaped against interpolation).
    Compose,
    /// An env file for compose's `env_file:` (values taken literally).
    ComposeEnv,
    /// `key=value` lines, a bare `key` for a flag set to `true`, one line
    /// per element of an array (daemons' flat config files).
    KeyValue,
    /// A Kubernetes manifest (YAML) that may embed other files of its
    /// machine (`$stackc_file`) and digests of them (`$stackc_digest`).
    Kubernetes,
}

/// One file to emit: structured content that `render` turns into bytes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub format: Format,
    pub content: serde_json::Value,
    /// Secret files get mode 0600 and a keyed digest in the manifest.
    #[serde(default)]
    pub secret: bool,
    /// A schema of `schemas/` the written file must satisfy (verify stage).
    #[serde(default)]
    pub schema: Option<String>,
}

impl FileSpec {
    /// A file that is not secret and names no schema.
    pub fn new(format: Format, content: serde_json::Value) -> Self {
        FileSpec {
            format,
            content,
            secret: false,
            schema: None,
        }
    }
}

/// Content may hold resolved secrets: `{:?}` shows the shape, never it.
impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("format", &self.format)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

pub fn from_value(value: &serde_json::Value) -> Result<Stack, Vec<Diagnostic>> {
    let not_a_stack = |why: String| {
        vec![
            Diagnostic::error(Code::NotAStack, format!("the file does not evaluate to a stack: {why}"))
                .with_help("end the file with `stackc.stack { name = …, machines = { … } }`, where `stackc = import \"stackc.ncl\"`"),
        ]
    };
    let version = value.pointer("/stackc/output_version").and_then(|v| v.as_u64());
    match version {
        None => return Err(not_a_stack("it has no `stackc.output_version`".into())),
        Some(v) if v != OUTPUT_VERSION => {
            return Err(not_a_stack(format!(
                "it was lowered for output version {v}, this stackc reads version {OUTPUT_VERSION}"
            )));
        }
        Some(_) => {}
    }
    // A file without `format` is an override of one the compiler writes
    // (docs/modules.md, merging on the result): set apart for `lower`.
    let partial = |f: &serde_json::Value| f.is_object() && f.get("format").is_none();
    let has_partial = value.get("machines").and_then(|m| m.as_object()).is_some_and(|ms| {
        ms.values()
            .filter_map(|m| m.get("files")?.as_object())
            .any(|files| files.values().any(partial))
    });
    if !has_partial {
        return Stack::deserialize(value).map_err(|e| not_a_stack(e.to_string()));
    }
    let mut value = value.clone();
    for m in value["machines"]
        .as_object_mut()
        .into_iter()
        .flat_map(|ms| ms.values_mut())
    {
        let Some(files) = m.get_mut("files").and_then(|f| f.as_object_mut()) else {
            continue;
        };
        let paths: Vec<String> = files
            .iter()
            .filter(|(_, f)| partial(f))
            .map(|(p, _)| p.clone())
            .collect();
        let overrides: serde_json::Map<String, serde_json::Value> = paths
            .into_iter()
            .filter_map(|p| files.remove(&p).map(|f| (p, f)))
            .collect();
        m["file_overrides"] = serde_json::Value::Object(overrides);
    }
    Stack::deserialize(&value).map_err(|e| not_a_stack(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::answers;

    #[test]
    fn a_bind_answers_the_addresses_a_socket_accepts() {
        for bind in ["0.0.0.0", "::", "[::]"] {
            assert!(answers(bind, "10.1.0.2") && answers(bind, "127.0.0.1"), "{bind}");
        }
        assert!(answers("10.1.0.2", "10.1.0.2"));
        assert!(!answers("10.1.0.2", "10.2.0.2"), "another address of the machine");
        assert!(!answers("10.1.0.2", "127.0.0.1"), "a specific bind is not on loopback");
        assert!(
            !answers("127.0.0.1", "10.1.0.2"),
            "loopback is not reached from outside"
        );
        assert!(answers("127.0.0.1", "localhost") && answers("::1", "localhost"));
        assert!(
            !answers("::1", "127.0.0.1") && !answers("127.0.0.1", "127.0.0.2"),
            "one loopback address each"
        );
        assert!(answers("fd00::2", "[fd00::2]"), "a URL's bracketed IPv6 host");
        assert!(answers("fd00:0::2", "fd00::2"), "IPv6 compared by value");
    }
}
