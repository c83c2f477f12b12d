//! Address math for overlay networks, pure (no store, no clock): the default address pools and the next free
//! subnet in them, overlap checks, gateways, VXLAN VNIs, and the per-network address allocator that hands out
//! task IPs and VIPs. The allocator and the control API decide with these; netmesh only applies the results.

use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The first VXLAN network identifier handed out (SwarmKit's overlay driver starts there too; lower ones are
/// left to whatever else runs VXLAN on the host).
pub const FIRST_VNI: u32 = 4096;

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// What a request for addresses could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The text is not an IPv4 CIDR.
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.20.0.0/24")]
    InvalidSubnet(String),
    /// The CIDR has host bits set (10.0.0.1/24 instead of 10.0.0.0/24).
    #[error("invalid subnet {given}: host bits are set (did you mean {network}?)")]
    HostBitsSet { given: String, network: String },
    /// The subnet leaves no room for a gateway and one more address.
    #[error("invalid subnet {0}: too small, the prefix must be /30 or shorter")]
    TooSmall(String),
    /// The gateway is not a usable host address of the subnet.
    #[error("invalid gateway {gateway}: not a host address of subnet {subnet}")]
    GatewayOutside { gateway: String, subnet: String },
    /// The subnet overlaps one a network already has.
    #[error("Pool overlaps with other one on this address space: {subnet} overlaps network {network} ({other})")]
    Overlap { subnet: String, network: String, other: String },
    /// Every subnet of the default pools is taken.
    #[error(
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"
    )]
    PoolsExhausted,
    /// The pool's mask length cannot split it.
    #[error("invalid default address pool {pool}: mask length {mask} must be between the pool's prefix and 30")]
    BadPoolMask { pool: String, mask: u8 },
    /// Every VNI is taken.
    #[error("no free VXLAN network identifier")]
    VnisExhausted,
    /// Every host address of the network is taken.
    #[error("no available IP address in subnet {0}")]
    SubnetExhausted(String),
}

/// Parses an IPv4 CIDR with no host bits set, of a size that holds a gateway and at least one more address.
pub fn parse_subnet(s: &str) -> Result<Ipv4Net, IpamError> {
    let net: Ipv4Net = s.trim().parse().map_err(|_| IpamError::InvalidSubnet(s.to_string()))?;
    if net.trunc() != net {
        return Err(IpamError::HostBitsSet { given: s.to_string(), network: net.trunc().to_string() });
    }
    if net.prefix_len() > 30 {
        return Err(IpamError::TooSmall(s.to_string()));
    }
    Ok(net)
}

/// Whether two subnets share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Refuses `subnet` if it overlaps one of `used` (network name, its subnet).
pub fn check_free<'a>(subnet: &Ipv4Net, used: impl IntoIterator<Item = (&'a str, Ipv4Net)>) -> Result<(), IpamError> {
    for (name, other) in used {
        if overlaps(subnet, &other) {
            return Err(IpamError::Overlap {
                subnet: subnet.to_string(),
                network: name.to_string(),
                other: other.to_string(),
            });
        }
    }
    Ok(())
}

/// The address pools networks without `--subnet` take their subnets from (`swarm init --default-addr-pool`,
/// `--default-addr-pool-mask-length`; Docker's default: 10.0.0.0/8 in /24s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPools {
    pools: Vec<Ipv4Net>,
    mask_len: u8,
}

impl Default for DefaultPools {
    fn default() -> Self {
        DefaultPools { pools: vec!["10.0.0.0/8".parse().expect("constant")], mask_len: 24 }
    }
}

impl DefaultPools {
    /// Pools from their CIDRs (empty: Docker's default) and the mask length of the subnets cut from them.
    pub fn new(pools: &[String], mask_len: u8) -> Result<Self, IpamError> {
        if pools.is_empty() {
            return Ok(DefaultPools { mask_len, ..Default::default() }.checked()?);
        }
        let pools = pools.iter().map(|p| parse_subnet(p)).collect::<Result<Vec<_>, _>>()?;
        DefaultPools { pools, mask_len }.checked()
    }

    fn checked(self) -> Result<Self, IpamError> {
        for p in &self.pools {
            if self.mask_len < p.prefix_len() || self.mask_len > 30 {
                return Err(IpamError::BadPoolMask { pool: p.to_string(), mask: self.mask_len });
            }
        }
        Ok(self)
    }

    /// The first subnet of the pools, in order, that overlaps none of `used`.
    pub fn next_free(&self, used: &[Ipv4Net]) -> Result<Ipv4Net, IpamError> {
        for pool in &self.pools {
            let subnets = pool.subnets(self.mask_len).map_err(|_| IpamError::PoolsExhausted)?;
            // Skip whole used ranges at once rather than walking a /8 in /24s subnet by subnet.
            let mut candidate = subnets.into_iter().next();
            while let Some(c) = candidate {
                match used.iter().filter(|u| overlaps(&c, u)).map(|u| u.broadcast()).max() {
                    None => return Ok(c),
                    Some(last) => {
                        let next = u32::from(last.max(c.broadcast())).checked_add(1).map(Ipv4Addr::from);
                        candidate = next
                            .and_then(|a| Ipv4Net::new(a, self.mask_len).ok())
                            .map(|n| n.trunc())
                            .filter(|n| pool.contains(n));
                    }
                }
            }
        }
        Err(IpamError::PoolsExhausted)
    }
}

/// The gateway of `subnet`: `given` if it is one of its host addresses, else (empty) the first host address.
pub fn gateway(subnet: &Ipv4Net, given: &str) -> Result<Ipv4Addr, IpamError> {
    if given.is_empty() {
        return Ok(first_host(subnet));
    }
    let outside = || IpamError::GatewayOutside { gateway: given.to_string(), subnet: subnet.to_string() };
    let gw: Ipv4Addr = given.trim().parse().map_err(|_| outside())?;
    if !subnet.contains(&gw) || gw == subnet.network() || gw == subnet.broadcast() {
        return Err(outside());
    }
    Ok(gw)
}

fn first_host(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The lowest VNI from [`FIRST_VNI`] up that is not in `used`.
pub fn next_vni(used: &BTreeSet<u32>) -> Result<u32, IpamError> {
    let mut vni = FIRST_VNI;
    for &u in used.range(FIRST_VNI..) {
        if u != vni {
            break;
        }
        vni += 1;
    }
    if vni > MAX_VNI {
        return Err(IpamError::VnisExhausted);
    }
    Ok(vni)
}

/// One network's host addresses: hands out task IPs and VIPs, never the network, gateway or broadcast address.
/// Addresses are handed out in order after the last one given (wrapping), so a released address is reused only
/// once the others have been used, and never while it is still held.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    taken: BTreeSet<Ipv4Addr>,
    /// Where the next search starts.
    cursor: u32,
}

impl AddressAllocator {
    pub fn new(subnet: Ipv4Net, gateway: Ipv4Addr) -> Self {
        AddressAllocator { subnet, gateway, taken: BTreeSet::new(), cursor: u32::from(first_host(&subnet)) }
    }

    /// Whether `addr` may be handed out at all.
    fn usable(&self, addr: Ipv4Addr) -> bool {
        self.subnet.contains(&addr)
            && addr != self.subnet.network()
            && addr != self.subnet.broadcast()
            && addr != self.gateway
    }

    /// Records an address already held (read back from the store); false if it is not usable or already held.
    pub fn reserve(&mut self, addr: Ipv4Addr) -> bool {
        self.usable(addr) && self.taken.insert(addr)
    }

    /// The next free address after the last one handed out.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let (lo, hi) = (u32::from(self.subnet.network()) + 1, u32::from(self.subnet.broadcast()) - 1);
        let span = hi - lo + 1;
        for i in 0..span {
            let a = Ipv4Addr::from(lo + (self.cursor.saturating_sub(lo) + i) % span);
            if self.usable(a) && !self.taken.contains(&a) {
                self.taken.insert(a);
                self.cursor = u32::from(a) + 1;
                return Ok(a);
            }
        }
        Err(IpamError::SubnetExhausted(self.subnet.to_string()))
    }

    /// Gives `addr` back; it is handed out again only after the others.
    pub fn release(&mut self, addr: Ipv4Addr) {
        self.taken.remove(&addr);
    }

    /// Where the next search starts (to carry the order of hand-outs from one allocator to the next).
    pub fn cursor(&self) -> u32 {
        self.cursor
    }

    /// Starts the next search at `cursor` (a value [`AddressAllocator::cursor`] returned).
    pub fn resume_at(&mut self, cursor: u32) {
        self.cursor = cursor;
    }

    /// Starts the next search after the highest address held, so that after a restart the addresses released
    /// before it still come back last.
    pub fn resume_after_highest(&mut self) {
        if let Some(a) = self.taken.last() {
            self.cursor = u32::from(*a) + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_are_checked_when_parsed() {
        assert_eq!(parse_subnet("10.20.0.0/16").unwrap(), net("10.20.0.0/16"));
        assert!(matches!(parse_subnet("10.20.0.0"), Err(IpamError::InvalidSubnet(_))));
        assert!(matches!(parse_subnet("fd00::/64"), Err(IpamError::InvalidSubnet(_))));
        assert_eq!(
            parse_subnet("10.0.0.1/24").unwrap_err().to_string(),
            "invalid subnet 10.0.0.1/24: host bits are set (did you mean 10.0.0.0/24?)"
        );
        assert!(matches!(parse_subnet("10.0.0.0/31"), Err(IpamError::TooSmall(_))));
    }

    #[test]
    fn overlapping_subnets_are_refused_by_name() {
        let used = [("front", net("10.1.0.0/16")), ("back", net("192.168.5.0/24"))];
        assert!(check_free(&net("10.2.0.0/16"), used).is_ok());
        let e = check_free(&net("10.1.3.0/24"), used).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Pool overlaps with other one on this address space: 10.1.3.0/24 overlaps network front (10.1.0.0/16)"
        );
        assert!(check_free(&net("192.168.0.0/16"), used).is_err(), "a larger subnet around one in use");
    }

    #[test]
    fn the_default_pools_give_the_next_free_subnet() {
        let pools = DefaultPools::default();
        assert_eq!(pools.next_free(&[]).unwrap(), net("10.0.0.0/24"));
        assert_eq!(pools.next_free(&[net("10.0.0.0/24")]).unwrap(), net("10.0.1.0/24"));
        // A user subnet in the middle of the pool is skipped whole; a gap before it is used.
        assert_eq!(pools.next_free(&[net("10.0.0.0/23"), net("10.0.3.0/24")]).unwrap(), net("10.0.2.0/24"));
        assert_eq!(pools.next_free(&[net("10.0.0.0/16")]).unwrap(), net("10.1.0.0/24"));
    }

    #[test]
    fn configured_pools_are_used_in_order_until_exhausted() {
        let pools = DefaultPools::new(&["192.168.0.0/23".into(), "172.16.0.0/24".into()], 24).unwrap();
        let mut used = Vec::new();
        for want in ["192.168.0.0/24", "192.168.1.0/24", "172.16.0.0/24"] {
            let got = pools.next_free(&used).unwrap();
            assert_eq!(got, net(want));
            used.push(got);
        }
        assert_eq!(pools.next_free(&used).unwrap_err(), IpamError::PoolsExhausted);
        assert!(matches!(DefaultPools::new(&["10.0.0.0/16".into()], 8), Err(IpamError::BadPoolMask { .. })));
        assert!(matches!(DefaultPools::new(&[], 31), Err(IpamError::BadPoolMask { .. })));
    }

    #[test]
    fn the_gateway_is_the_first_host_unless_a_host_address_is_given() {
        let n = net("10.0.5.0/24");
        assert_eq!(gateway(&n, "").unwrap(), Ipv4Addr::new(10, 0, 5, 1));
        assert_eq!(gateway(&n, "10.0.5.254").unwrap(), Ipv4Addr::new(10, 0, 5, 254));
        for bad in ["10.0.6.1", "10.0.5.0", "10.0.5.255", "nope"] {
            let e = gateway(&n, bad).unwrap_err();
            assert_eq!(e.to_string(), format!("invalid gateway {bad}: not a host address of subnet 10.0.5.0/24"));
        }
    }

    #[test]
    fn vnis_start_at_4096_and_fill_gaps() {
        assert_eq!(next_vni(&BTreeSet::new()).unwrap(), 4096);
        assert_eq!(next_vni(&[4096, 4097, 4099].into()).unwrap(), 4098);
        assert_eq!(next_vni(&[1, 4096].into()).unwrap(), 4097, "VNIs below the range do not matter");
        let full: BTreeSet<u32> = (FIRST_VNI..=MAX_VNI).collect();
        assert_eq!(next_vni(&full).unwrap_err(), IpamError::VnisExhausted);
    }

    #[test]
    fn addresses_never_include_network_gateway_or_broadcast_and_run_out() {
        let n = net("10.0.0.0/29"); // hosts .1–.6, gateway .1: five addresses to give
        let mut a = AddressAllocator::new(n, Ipv4Addr::new(10, 0, 0, 1));
        let given: Vec<Ipv4Addr> = (0..5).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(given, (2..=6).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect::<Vec<_>>());
        assert_eq!(a.allocate().unwrap_err().to_string(), "no available IP address in subnet 10.0.0.0/29");
        assert!(!a.reserve(Ipv4Addr::new(10, 0, 0, 7)), "the broadcast address is never held");
        assert!(!a.reserve(Ipv4Addr::new(10, 0, 0, 1)), "nor the gateway");

        // A gateway other than the first host leaves .1 usable.
        let mut b = AddressAllocator::new(n, Ipv4Addr::new(10, 0, 0, 6));
        assert_eq!(b.allocate().unwrap(), Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn a_released_address_is_reused_only_after_the_others() {
        let mut a = AddressAllocator::new(net("10.0.0.0/29"), Ipv4Addr::new(10, 0, 0, 1));
        let first = a.allocate().unwrap();
        let second = a.allocate().unwrap();
        assert!(!a.reserve(first), "held addresses cannot be held twice");
        a.release(first);
        // .4, .5, .6 come before the released .2.
        let next: Vec<Ipv4Addr> = (0..4).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(next[..3], [4, 5, 6].map(|i| Ipv4Addr::new(10, 0, 0, i)));
        assert_eq!(next[3], first, "the released address comes back once the others are given");
        assert!(!next.contains(&second), "a held address is never given twice");
        assert!(a.allocate().is_err());
    }
}
