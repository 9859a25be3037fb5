// SPDX-License-Identifier: GPL-2.0
/*
 * Director programs. XDP on the front interface answers ARP and ICMP echo
 * for owned addresses and forwards DR and TUN services; NAT services go up
 * to the TC programs, which translate and redirect with neighbour
 * resolution. XDP on the inside interface answers for the NAT gateway.
 * TC egress on the front interface encapsulates TUN health probes.
 * Everything addressed to an owned address is either handled or dropped.
 */
#include "lb.h"

struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline int mac_zero(const __u8 *m)
{
	return (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) == 0;
}

static __always_inline int owned_live(__be32 addr, __u32 role, __u64 now)
{
	struct owned o;

	return owned_find(addr, &o) && (o.flags & role) && lease_valid(o.lease_idx, now);
}

static __always_inline int xdp_arp(struct xdp_md *ctx, struct ethhdr *eth, void *data_end,
				   __u32 role, struct config *c)
{
	struct arp_eth *a = (void *)(eth + 1);
	const __u8 *mymac = role == OWN_FRONT ? c->front_mac : c->inside_mac;
	__be32 tpa, spa;

	if ((void *)(a + 1) > data_end)
		goto pass;
	if (a->htype != bpf_htons(ARPHRD_ETHER) || a->ptype != bpf_htons(ETH_P_IP) ||
	    a->hlen != ETH_ALEN || a->plen != 4 || a->op != bpf_htons(ARPOP_REQUEST))
		goto pass;
	__builtin_memcpy(&tpa, a->tpa, 4);
	__builtin_memcpy(&spa, a->spa, 4);
	/* Someone else announcing the address: not a question for us. */
	if (spa == tpa)
		goto pass;
	if (!owned_live(tpa, role, now_ns(c)))
		goto pass;

	__builtin_memcpy(eth->h_dest, a->sha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mymac, ETH_ALEN);
	a->op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(a->tha, a->sha, ETH_ALEN);
	__builtin_memcpy(a->tpa, &spa, 4);
	__builtin_memcpy(a->sha, mymac, ETH_ALEN);
	__builtin_memcpy(a->spa, &tpa, 4);
	count(R_XDP_TX_ARP_REPLY);
	return XDP_TX;
pass:
	count(R_XDP_PASS_ARP);
	return XDP_PASS;
}

static __always_inline int xdp_dr(struct ethhdr *eth, struct real *rs, struct config *c)
{
	if (mac_zero(rs->mac)) {
		count(R_DROP_NO_NEIGH);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, rs->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, c->front_mac, ETH_ALEN);
	count(R_XDP_TX_DR);
	return XDP_TX;
}

static __always_inline int xdp_tun(struct xdp_md *ctx, struct real *rs, struct config *c)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *inner = (void *)(eth + 1), *outer;
	__u8 mac[ETH_ALEN];
	__be32 daddr = rs->addr;
	__u16 inner_len;
	__u8 tos;

	if (mac_zero(rs->mac)) {
		count(R_DROP_NO_NEIGH);
		return XDP_DROP;
	}
	__builtin_memcpy(mac, rs->mac, ETH_ALEN);
	if ((void *)(inner + 1) > data_end)
		return XDP_DROP;
	inner_len = bpf_ntohs(inner->tot_len);
	tos = inner->tos;

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr))) {
		count(R_DROP_ERROR);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > data_end) {
		count(R_DROP_ERROR);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, c->front_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + sizeof(struct iphdr));
	/* DF always, as Linux ipip with pmtudisc: with ID 0 the outer packet
	 * must never be fragmented, or fragments of different datagrams
	 * could be reassembled together. */
	outer->id = 0;
	outer->frag_off = bpf_htons(IP_DF);
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = c->front_addr;
	outer->daddr = daddr;
	outer->check = ip_csum(outer);
	count(R_XDP_TX_TUN);
	return XDP_TX;
}

static __always_inline int xdp_echo(struct ethhdr *eth, struct iphdr *ip, struct icmphdr *icmp)
{
	__u8 tmp[ETH_ALEN];
	__u16 old = *(__u16 *)icmp;
	__be32 a;

	icmp->type = ICMP_ECHOREPLY;
	icmp->checksum = csum_replace2(icmp->checksum, old, *(__u16 *)icmp);
	a = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = a;
	ip->ttl = 64;
	ip->check = 0;
	ip->check = ip_csum(ip);
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
	count(R_XDP_TX_ICMP_ECHO);
	return XDP_TX;
}

/* An ICMP error about a packet a realserver sent from a VIP goes to that
 * realserver, so path-MTU discovery works through the director. */
static __always_inline int xdp_icmp_error(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					  struct icmphdr *icmp, void *data_end,
					  struct config *c, __u64 now)
{
	struct iphdr *in = (void *)(icmp + 1);
	struct conn_key key = {};
	struct conn *cn;
	struct real *rs;
	struct svc *s;
	__be16 *ports;
	__u32 idx;

	if ((void *)(in + 1) > data_end)
		goto truncated;
	if (in->ihl != 5 || in->saddr != ip->daddr ||
	    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP)) {
		count(R_DROP_ICMP_NO_CONN);
		return XDP_DROP;
	}
	ports = (void *)(in + 1);
	if ((void *)(ports + 2) > data_end)
		goto truncated;
	s = svc_find(in->saddr, ports[0], in->protocol);
	if (!s) {
		count(R_DROP_NO_SERVICE);
		return XDP_DROP;
	}
	if (!lease_valid(s->lease_idx, now)) {
		count(R_DROP_NO_LEASE);
		return XDP_DROP;
	}
	key.saddr = in->daddr;
	key.daddr = in->saddr;
	key.sport = ports[1];
	key.dport = ports[0];
	key.proto = in->protocol;
	cn = conn_find(&key, c);
	if (!cn)
		goto noconn;
	idx = cn->rs_idx;
	rs = bpf_map_lookup_elem(&reals, &idx);
	if (!rs || !(rs->flags & RS_VALID) || rs->addr != cn->rs_addr)
		goto noconn;
	if (rs->method == METHOD_NAT) {
		/* The quoted header needs rewriting too: TC does it (and
		 * the accounting) with the skb checksum helpers. */
		count(R_XDP_PASS_NAT);
		return XDP_PASS;
	}
	account(s->id, idx, data_end - (void *)(long)ctx->data);
	if (rs->method == METHOD_DR) {
		count(R_XDP_TX_ICMP_ERROR);
		return xdp_dr(eth, rs, c);
	}
	if (rs->method == METHOD_TUN) {
		/* Never GSO here, and never answered (no error about an
		 * error): one that would not fit encapsulated dies counted. */
		if (data_end - (void *)(long)ctx->data - ETH_HLEN + sizeof(struct iphdr) >
		    c->front_mtu) {
			count(R_DROP_TOO_BIG);
			return XDP_DROP;
		}
		count(R_XDP_TX_ICMP_ERROR);
		return xdp_tun(ctx, rs, c);
	}
noconn:
	count(R_DROP_ICMP_NO_CONN);
	return XDP_DROP;
truncated:
	count(R_DROP_TRUNCATED);
	return XDP_DROP;
}

/* Put the realserver picked for a packet XDP passes on in front of it,
 * for TC. */
static __always_inline void xdp_hand_pick(struct xdp_md *ctx, struct flow *f, struct real *rs,
					  __u32 idx)
{
	struct xdp_meta *m;

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*m)))
		return; /* the driver keeps no metadata */
	m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return;
	m->magic = XDP_META_MAGIC;
	m->rs_idx = idx;
	m->rs_addr = rs->addr;
	m->rs_port = rs->port;
	m->proto = f->key.proto;
	m->pad = 0;
	m->saddr = f->key.saddr;
	m->sport = f->key.sport;
	m->dport = f->key.dport;
}

static __always_inline int drop_if_owned(__be32 daddr, __u32 r)
{
	struct owned o;

	if (owned_find(daddr, &o)) {
		count(r);
		return XDP_DROP;
	}
	count(R_XDP_PASS_NOT_OWNED);
	return XDP_PASS;
}

/* The flow of a TCP or UDP packet (ip->protocol says which); 0 when its
 * header is cut short. */
static __always_inline int parse_l4(struct iphdr *ip, void *data_end, struct flow *f)
{
	f->key.saddr = ip->saddr;
	f->key.daddr = ip->daddr;
	f->key.proto = ip->protocol;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = (void *)(ip + 1);

		if ((void *)(th + 1) > data_end)
			return 0;
		f->key.sport = th->source;
		f->key.dport = th->dest;
		f->syn = th->syn;
		f->ack = th->ack;
		f->fin = th->fin;
		f->rst = th->rst;
	} else {
		struct udphdr *uh = (void *)(ip + 1);

		if ((void *)(uh + 1) > data_end)
			return 0;
		f->key.sport = uh->source;
		f->key.dport = uh->dest;
	}
	return 1;
}

/* Send a front packet of service s on to realserver rs (index idx) by its
 * method; f->len is the frame's length. */
static __always_inline int xdp_send(struct xdp_md *ctx, struct ethhdr *eth, struct svc *s,
				    struct flow *f, struct real *rs, __u32 idx, struct config *c)
{
	switch (rs->method) {
	case METHOD_DR:
		account(s->id, idx, f->len);
		return xdp_dr(eth, rs, c);
	case METHOD_TUN:
		/* A GSO packet (generic XDP) must be encapsulated where the
		 * kernel learns it is a tunnel, or segmenting it fails later. */
		if (f->len - ETH_HLEN + sizeof(struct iphdr) > c->front_mtu) {
			xdp_hand_pick(ctx, f, rs, idx);
			count(R_XDP_PASS_OVERSIZE);
			return XDP_PASS;
		}
		account(s->id, idx, f->len);
		return xdp_tun(ctx, rs, c);
	case METHOD_NAT:
		/* TC translates, with this pick when the driver keeps
		 * metadata; without, it finds the connection recorded. */
		xdp_hand_pick(ctx, f, rs, idx);
		count(R_XDP_PASS_NAT);
		return XDP_PASS;
	}
	count(R_DROP_ERROR);
	return XDP_DROP;
}

static __always_inline int xdp_main(struct xdp_md *ctx, __u32 role)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct flow f = {};
	struct config *c;
	struct iphdr *ip;
	struct real *rs;
	struct svc *s;
	__u64 now;
	__u32 idx;

	if ((void *)(eth + 1) > data_end)
		goto not_ip;
	c = get_cfg();
	if (!c)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return xdp_arp(ctx, eth, data_end, role, c);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		goto not_ip;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4)
		goto not_ip; /* the kernel drops what it cannot parse */
	if (ip->ihl != 5)
		return drop_if_owned(ip->daddr, R_DROP_IP_OPTIONS);
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return drop_if_owned(ip->daddr, R_DROP_FRAGMENT);

	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = (void *)(ip + 1);
		struct owned o;

		if (!owned_find(ip->daddr, &o)) {
			count(R_XDP_PASS_NOT_OWNED);
			return XDP_PASS;
		}
		if ((void *)(icmp + 1) > data_end) {
			count(R_DROP_TRUNCATED);
			return XDP_DROP;
		}
		now = now_ns(c);
		if (icmp->type == ICMP_ECHO && icmp->code == 0) {
			if (!(o.flags & role) || !lease_valid(o.lease_idx, now)) {
				count(R_DROP_NO_LEASE);
				return XDP_DROP;
			}
			return xdp_echo(eth, ip, icmp);
		}
		if (role == OWN_FRONT &&
		    (icmp->type == ICMP_DEST_UNREACH || icmp->type == ICMP_TIME_EXCEEDED))
			return xdp_icmp_error(ctx, eth, ip, icmp, data_end, c, now);
		count(R_DROP_PROTO);
		return XDP_DROP;
	}
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return drop_if_owned(ip->daddr, R_DROP_PROTO);

	if (!parse_l4(ip, data_end, &f))
		return drop_if_owned(ip->daddr, R_DROP_TRUNCATED);

	s = svc_find(ip->daddr, f.key.dport, ip->protocol);
	if (!s)
		return drop_if_owned(ip->daddr, R_DROP_NO_SERVICE);
	if (role != OWN_FRONT) {
		count(R_DROP_NO_SERVICE);
		return XDP_DROP;
	}
	now = now_ns(c);
	if (!lease_valid(s->lease_idx, now)) {
		count(R_DROP_NO_LEASE);
		return XDP_DROP;
	}
	f.len = data_end - data;
	rs = conn_select(s, &f, now, &idx, c);
	if (!rs) {
		count(R_DROP_NO_REAL);
		return XDP_DROP;
	}
	return xdp_send(ctx, eth, s, &f, rs, idx, c);
not_ip:
	count(R_XDP_PASS_NOT_IP);
	return XDP_PASS;
}

/*
 * The front program's common case: a packet of a recorded connection
 * whose state does not change and whose refresh is not due. It takes the
 * same steps xdp_main would and leaves as soon as anything differs,
 * having changed nothing, so xdp_main starts over. Kept apart because a
 * small program is faster: with the whole of xdp_main around it, the same
 * steps cost a third more (its code and data are out of the cache when
 * packets are few). It steps aside while the connection table is crowded
 * (mostly full, as under a flood of new flows): then many packets miss,
 * and xdp_main would wait out the same cache misses a second time, which
 * costs a new flow more than the fast path saves an established one.
 */
static __always_inline int xdp_established(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct flow f = {};
	struct ct_slot *slot;
	struct config *c;
	struct ct_pos pos;
	struct conn *cn;
	struct real *rs;
	struct svc *s;
	__u64 now;
	__u32 idx;

	c = get_cfg();
	if (!c || c->ct_crowded)
		return -1;
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 ||
	    ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
	    (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) || !parse_l4(ip, data_end, &f) ||
	    (f.syn && !f.ack))
		return -1;
	s = svc_find(ip->daddr, f.key.dport, ip->protocol);
	if (!s)
		return -1;
	now = now_ns(c);
	if (!lease_valid(s->lease_idx, now))
		return -1;
	ct_hash((__u64 *)&f.key, c->ct_seed, c->conn_buckets, &pos);
	slot = ct_find(&conns, (__u64 *)&f.key, &pos, 1, 0); /* not crowded, see above */
	if (!slot)
		return -1;
	cn = &slot->val.conn;
	rs = conn_real(s, cn, &idx);
	if (!rs || conn_next_state(cn, &f) != cn->state || now - cn->event_ns >= s->refresh_ns)
		return -1;
	cn->last_seen_ns = now;
	f.len = data_end - data;
	return xdp_send(ctx, eth, s, &f, rs, idx, c);
}

/* Holds xdp_front_full; Go fills it before anything is attached. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} front_full SEC(".maps");

SEC("xdp")
int xdp_front(struct xdp_md *ctx)
{
	int verdict = xdp_established(ctx);

	if (verdict >= 0)
		return verdict;
	bpf_tail_call(ctx, &front_full, 0);
	count(R_DROP_ERROR);
	return XDP_DROP;
}

SEC("xdp")
int xdp_front_full(struct xdp_md *ctx)
{
	return xdp_main(ctx, OWN_FRONT);
}

SEC("xdp")
int xdp_inside(struct xdp_md *ctx)
{
	return xdp_main(ctx, OWN_INSIDE);
}

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define L4_OFF (ETH_HLEN + sizeof(struct iphdr))

/* Parsed view of an IPv4 TCP/UDP skb with a 20-byte IP header. */
struct tc_pkt {
	struct flow f;
	__u32 l4_csum_off;
	__u64 mangled0;
	int owned_dst;
};

enum { TC_NOT_L4 = 0, TC_L4 = 1, TC_BAD = 2 };

static __always_inline int tc_parse(struct __sk_buff *skb, struct tc_pkt *p)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 need = ETH_HLEN + sizeof(struct iphdr) + sizeof(struct tcphdr);

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_NOT_L4;
	if (skb->len < need)
		need = skb->len;
	if ((void *)(long)skb->data + need > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, need);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_NOT_L4;
	{
		struct owned o;

		p->owned_dst = owned_find(ip->daddr, &o);
	}
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return TC_BAD;
	p->f.key.saddr = ip->saddr;
	p->f.key.daddr = ip->daddr;
	p->f.key.proto = ip->protocol;
	p->f.len = skb->len;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = (void *)(ip + 1);

		if ((void *)(th + 1) > data_end)
			return TC_BAD;
		p->f.key.sport = th->source;
		p->f.key.dport = th->dest;
		p->f.syn = th->syn;
		p->f.ack = th->ack;
		p->f.fin = th->fin;
		p->f.rst = th->rst;
		p->l4_csum_off = L4_OFF + offsetof(struct tcphdr, check);
		p->mangled0 = 0;
		return TC_L4;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *uh = (void *)(ip + 1);

		if ((void *)(uh + 1) > data_end)
			return TC_BAD;
		p->f.key.sport = uh->source;
		p->f.key.dport = uh->dest;
		p->l4_csum_off = L4_OFF + offsetof(struct udphdr, check);
		/* A zero UDP checksum means "none" and must stay zero. */
		p->mangled0 = BPF_F_MARK_MANGLED_0;
		return TC_L4;
	}
	return TC_NOT_L4;
}

/* Rewrite one address and one port, keeping IP and L4 checksums right for
 * full and partial (offloaded) checksums alike. */
static __always_inline int tc_rewrite(struct __sk_buff *skb, struct tc_pkt *p, __u32 addr_off,
				      __be32 old_addr, __be32 new_addr, __u32 port_off,
				      __be16 old_port, __be16 new_port)
{
	if (bpf_l4_csum_replace(skb, p->l4_csum_off, old_addr, new_addr,
				BPF_F_PSEUDO_HDR | p->mangled0 | sizeof(new_addr)))
		return -1;
	if (bpf_l4_csum_replace(skb, p->l4_csum_off, old_port, new_port,
				p->mangled0 | sizeof(new_port)))
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
		return -1;
	return 0;
}

/* What tc_frag_needed writes after the Ethernet header: its IP and ICMP
 * headers, then the quote, the client's IP header and the first 8 bytes
 * of its payload (RFC 792): ports, and a TCP sequence number, which is all
 * a host reads to find its socket. */
struct frag_needed {
	struct iphdr ip;
	struct icmphdr icmp;
	struct iphdr quote;
	__u8 quote_l4[8];
};

#define FN_LEN (ETH_HLEN + sizeof(struct frag_needed))
#define IPTOS_PREC_INTERNETCONTROL 0xc0 /* as Linux sends ICMP errors */

_Static_assert(sizeof(struct frag_needed) == 56, "frag_needed has padding");

/* A source that names one host (RFC 1122 3.2.2: no ICMP error to any other). */
static __always_inline int unicast_source(__be32 addr)
{
	__u32 a = bpf_ntohl(addr);

	return a != 0 && (a >> 24) != 127 && (a >> 28) < 0xe;
}

/*
 * A TUN packet that would not fit the front MTU once encapsulated and that
 * no segmentation will cut down (not GSO). As IPVS (ip_vs_tunnel_xmit):
 * when it forbids fragmenting (DF), the client is told "fragmentation
 * needed" with the MTU left inside the tunnel, from the VIP; otherwise it
 * is dropped, as BPF cannot fragment. Never an answer to an ICMP error or
 * to a source that is not one host. Not rate-limited: the answer is much
 * smaller than what provokes it. The caller checked the lease.
 *
 * The answer is built in the skb itself, from the stack: trimmed, cut to
 * its Ethernet and first 20 bytes, grown back and written. The cut takes
 * the start of the L4 header with it (the IP header is 20 bytes: tc_parse
 * saw to that), which turns a partial checksum (a sender on a local veth)
 * into none: nothing may later fill a TCP or UDP checksum into the answer. Trimming and growing end a complete checksum
 * the same way; every checksum in the answer is written here.
 */
static __always_inline int tc_frag_needed(struct __sk_buff *skb, struct config *c)
{
	struct frag_needed r = {};
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *oeth = data, eth;
	struct iphdr *in = data + ETH_HLEN;
	__u32 mtu = c->front_mtu - sizeof(struct iphdr);

	if ((void *)in + sizeof(r.quote) + sizeof(r.quote_l4) > data_end) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	if (!(in->frag_off & bpf_htons(IP_DF)) || !unicast_source(in->saddr) ||
	    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP) ||
	    c->front_mtu < 68 + sizeof(struct iphdr) || c->front_mtu > 0xffff) {
		count(R_DROP_TOO_BIG);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(eth.h_dest, oeth->h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, oeth->h_dest, ETH_ALEN);
	eth.h_proto = bpf_htons(ETH_P_IP);
	__builtin_memcpy(&r.quote, in, sizeof(r.quote));
	__builtin_memcpy(r.quote_l4, in + 1, sizeof(r.quote_l4));

	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tos = IPTOS_PREC_INTERNETCONTROL;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.frag_off = bpf_htons(IP_DF);
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = r.quote.daddr;
	r.ip.daddr = r.quote.saddr;
	r.ip.check = ip_csum(&r.ip);
	r.icmp.type = ICMP_DEST_UNREACH;
	r.icmp.code = ICMP_FRAG_NEEDED;
	r.icmp.rest = bpf_htonl(mtu); /* 16 unused bits, then the MTU */
	r.icmp.checksum = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&r.icmp,
						  sizeof(r) - sizeof(r.ip), 0));

	if (bpf_skb_change_tail(skb, FN_LEN, 0) ||
	    bpf_skb_adjust_room(skb, -(int)(FN_LEN - ETH_HLEN - sizeof(struct iphdr)),
				BPF_ADJ_ROOM_MAC, 0) ||
	    bpf_skb_change_tail(skb, FN_LEN, 0) ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0)) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	count(R_TC_TX_FRAG_NEEDED);
	return bpf_redirect(c->front_ifindex, 0);
}

/* DR and TUN for what XDP passed up: GSO packets too big to encapsulate
 * there, non-GSO ones too big to forward at all, or everything when no
 * XDP program runs. */
static __always_inline int tc_forward(struct __sk_buff *skb, struct real *rs, struct config *c)
{
	struct ethhdr eth = { .h_proto = bpf_htons(ETH_P_IP) };
	void *data, *data_end;
	struct iphdr *in, outer = {};
	__u32 len;

	if (mac_zero(rs->mac)) {
		count(R_DROP_NO_NEIGH);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(eth.h_dest, rs->mac, ETH_ALEN);
	__builtin_memcpy(eth.h_source, c->front_mac, ETH_ALEN);
	if (rs->method == METHOD_TUN) {
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		in = data + ETH_HLEN;
		if ((void *)(in + 1) > data_end)
			return TC_ACT_SHOT;
		len = bpf_ntohs(in->tot_len) + sizeof(outer);
		/* A GSO packet is segmented to fit after this; any other
		 * would be dropped by the device without a word. */
		if (len > c->front_mtu && !skb->gso_size)
			return tc_frag_needed(skb, c);
		outer.version = 4;
		outer.ihl = 5;
		outer.tos = in->tos;
		/* GSO segmentation rewrites it per segment anyway. */
		outer.tot_len = bpf_htons(len > 0xffff ? 0xffff : len);
		outer.frag_off = bpf_htons(IP_DF); /* as in xdp_tun */
		outer.ttl = 64;
		outer.protocol = IPPROTO_IPIP;
		outer.saddr = c->front_addr;
		outer.daddr = rs->addr;
		outer.check = ip_csum(&outer);
		if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0)) {
			count(R_DROP_ERROR);
			return TC_ACT_SHOT;
		}
		count(R_TC_TX_TUN);
	} else {
		count(R_TC_TX_DR);
	}
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0)) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	return bpf_redirect(c->front_ifindex, 0);
}

/* An ICMP error about a TCP/UDP packet, both IP headers 20 bytes. */
#define ICMP_CSUM_OFF (L4_OFF + offsetof(struct icmphdr, checksum))
#define IN_IP_OFF (L4_OFF + sizeof(struct icmphdr))
#define IN_CSUM_OFF (IN_IP_OFF + offsetof(struct iphdr, check))
#define IN_SRC_OFF (IN_IP_OFF + offsetof(struct iphdr, saddr))
#define IN_DST_OFF (IN_IP_OFF + offsetof(struct iphdr, daddr))
#define IN_SPORT_OFF (IN_IP_OFF + sizeof(struct iphdr))
#define IN_DPORT_OFF (IN_SPORT_OFF + 2)
#define ICMP_NEED (IN_DPORT_OFF + 2)

/* The outer addresses of an ICMP error and the packet it quotes. */
struct icmp_quote {
	__be32 outer_saddr;
	__be32 outer_daddr;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 check; /* the quoted IP header's */
	__u8 proto;
};

enum { ICMPQ_OK = 0, ICMPQ_NOT_ERROR = 1, ICMPQ_BAD = 2 };

static __always_inline int tc_icmp_quote(struct __sk_buff *skb, struct icmp_quote *q)
{
	__u32 need = skb->len < ICMP_NEED ? skb->len : ICMP_NEED;
	void *data, *data_end;
	struct icmphdr *icmp;
	struct iphdr *ip, *in;
	__be16 *ports;

	if ((void *)(long)skb->data + need > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, need);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	icmp = (void *)(ip + 1);
	if ((void *)(icmp + 1) > data_end)
		return ICMPQ_BAD;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED)
		return ICMPQ_NOT_ERROR;
	in = (void *)(icmp + 1);
	ports = (void *)(in + 1);
	if ((void *)(ports + 2) > data_end || in->ihl != 5 ||
	    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP))
		return ICMPQ_BAD;
	q->outer_saddr = ip->saddr;
	q->outer_daddr = ip->daddr;
	q->saddr = in->saddr;
	q->daddr = in->daddr;
	q->sport = ports[0];
	q->dport = ports[1];
	q->check = in->check;
	q->proto = in->protocol;
	return ICMPQ_OK;
}

/*
 * Translate an ICMP error: one outer address, and one address and port of
 * the quoted packet. ICMP has no pseudo-header, so the outer change touches
 * only the IP checksum; the ICMP checksum follows every quoted byte that
 * changes, the quoted IP checksum included. The quoted L4 checksum stays:
 * a truncated quote cannot be checked against it, and nobody does.
 */
static __always_inline int tc_icmp_rewrite(struct __sk_buff *skb, struct icmp_quote *q,
					   __u32 outer_off, __be32 outer_old, __be32 outer_new,
					   __u32 in_addr_off, __be32 in_old, __be32 in_new,
					   __u32 in_port_off, __be16 port_old, __be16 port_new)
{
	__u16 check = csum_replace4(q->check, in_old, in_new);

	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, outer_old, outer_new, sizeof(outer_new)) ||
	    bpf_skb_store_bytes(skb, outer_off, &outer_new, sizeof(outer_new), 0) ||
	    bpf_l4_csum_replace(skb, ICMP_CSUM_OFF, in_old, in_new, sizeof(in_new)) ||
	    bpf_l4_csum_replace(skb, ICMP_CSUM_OFF, q->check, check, sizeof(check)) ||
	    bpf_l4_csum_replace(skb, ICMP_CSUM_OFF, port_old, port_new, sizeof(port_new)) ||
	    bpf_skb_store_bytes(skb, in_addr_off, &in_new, sizeof(in_new), 0) ||
	    bpf_skb_store_bytes(skb, IN_CSUM_OFF, &check, sizeof(check), 0) ||
	    bpf_skb_store_bytes(skb, in_port_off, &port_new, sizeof(port_new), 0))
		return -1;
	return 0;
}

/*
 * An ICMP error to an owned address, which XDP passed up (or which no XDP
 * program saw): one about a reply a NAT realserver sent as the VIP (e.g.
 * frag-needed from a router on the client's path) goes to that
 * realserver, rewritten as if the reply had left with its own address, so
 * path-MTU discovery works through NAT. DR and TUN connections are
 * forwarded as they are, as XDP does.
 */
static __always_inline int tc_front_icmp(struct __sk_buff *skb)
{
	struct icmp_quote q = {};
	struct conn_key key = {};
	struct config *c;
	struct conn *cn;
	struct real *rs;
	struct svc *s;
	__u32 idx;
	int r;

	r = tc_icmp_quote(skb, &q);
	if (r != ICMPQ_OK) {
		count(r == ICMPQ_BAD ? R_DROP_TRUNCATED : R_DROP_PROTO);
		return TC_ACT_SHOT;
	}
	if (q.saddr != q.outer_daddr) {
		count(R_DROP_ICMP_NO_CONN);
		return TC_ACT_SHOT;
	}
	s = svc_find(q.saddr, q.sport, q.proto);
	if (!s) {
		count(R_DROP_NO_SERVICE);
		return TC_ACT_SHOT;
	}
	c = get_cfg();
	if (!c)
		return TC_ACT_SHOT;
	if (!lease_valid(s->lease_idx, now_ns(c))) {
		count(R_DROP_NO_LEASE);
		return TC_ACT_SHOT;
	}
	key.saddr = q.daddr;
	key.daddr = q.saddr;
	key.sport = q.dport;
	key.dport = q.sport;
	key.proto = q.proto;
	/* An error never refreshes or creates a connection. */
	cn = conn_find(&key, c);
	if (!cn)
		goto noconn;
	idx = cn->rs_idx;
	rs = bpf_map_lookup_elem(&reals, &idx);
	if (!rs || !(rs->flags & RS_VALID) || rs->addr != cn->rs_addr || rs->port != cn->rs_port)
		goto noconn;
	account(s->id, idx, skb->len);
	if (rs->method == METHOD_DR || rs->method == METHOD_TUN)
		return tc_forward(skb, rs, c);
	if (rs->method != METHOD_NAT) {
		count(R_TC_DROP_METHOD);
		return TC_ACT_SHOT;
	}
	if (tc_icmp_rewrite(skb, &q, IP_DST_OFF, q.outer_daddr, rs->addr, IN_SRC_OFF, q.saddr,
			    rs->addr, IN_SPORT_OFF, q.sport, rs->port)) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	count(R_TC_NAT_ICMP_IN);
	return bpf_redirect_neigh(c->inside_ifindex, NULL, 0, 0);
noconn:
	count(R_DROP_ICMP_NO_CONN);
	return TC_ACT_SHOT;
}

/*
 * The mirror image on the inside: an ICMP error about a packet a client
 * sent through NAT (e.g. port unreachable from the realserver) goes to the
 * client as if the VIP had sent it. Found by the reverse-NAT entry, as
 * replies are; returns -1 for an ICMP packet that is no such error.
 */
static __always_inline int tc_inside_icmp(struct __sk_buff *skb)
{
	struct icmp_quote q = {};
	struct rnat_key rk = {};
	struct conn_key ck = {};
	struct config *c;
	struct conn *cn;
	struct rnat *rv;
	struct svc *s;
	__u32 rs_idx = MAX_REALS;
	__be32 vip;
	__be16 vport;

	if (tc_icmp_quote(skb, &q) != ICMPQ_OK)
		return -1;
	rk.saddr = q.daddr;
	rk.daddr = q.saddr;
	rk.sport = q.dport;
	rk.dport = q.sport;
	rk.proto = q.proto;
	c = get_cfg();
	if (!c)
		return -1;
	rv = rnat_find(&rk, c);
	if (!rv)
		return -1;
	/* From here on it is about a NAT connection: translated or dropped,
	 * never handed to the kernel with the realserver's address inside. */
	if (q.outer_daddr != q.saddr) {
		count(R_DROP_ICMP_NO_CONN);
		return TC_ACT_SHOT;
	}
	vip = rv->vip;
	vport = rv->vport;
	s = svc_find(vip, vport, q.proto);
	if (!s) {
		count(R_TC_DROP_NAT_NO_CONN);
		return TC_ACT_SHOT;
	}
	if (!lease_valid(s->lease_idx, now_ns(c))) {
		count(R_DROP_NO_LEASE);
		return TC_ACT_SHOT;
	}
	ck.saddr = q.saddr;
	ck.daddr = vip;
	ck.sport = q.sport;
	ck.dport = vport;
	ck.proto = q.proto;
	cn = conn_find(&ck, c);
	if (cn)
		rs_idx = cn->rs_idx;
	account(s->id, rs_idx, skb->len);
	/* Whoever sent it (the realserver or a router beside it), the client
	 * must see it come from the VIP, as IPVS does. */
	if (tc_icmp_rewrite(skb, &q, IP_SRC_OFF, q.outer_saddr, vip, IN_DST_OFF, q.daddr, vip,
			    IN_DPORT_OFF, q.dport, vport)) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	count(R_TC_NAT_ICMP_OUT);
	return bpf_redirect_neigh(c->front_ifindex, NULL, 0, 0);
}

/* What XDP handed over in front of this packet (magic 0 if nothing).
 * Read before anything changes the skb. */
static __always_inline void tc_xdp_meta(struct __sk_buff *skb, struct xdp_meta *out)
{
	struct xdp_meta *m = (void *)(long)skb->data_meta;

	if ((void *)(m + 1) <= (void *)(long)skb->data)
		*out = *m;
}

/* The realserver XDP picked for f, if the metadata names this flow and
 * that realserver is still there, in s. */
static __always_inline struct real *picked_real(struct svc *s, struct flow *f, struct xdp_meta *m)
{
	__u32 idx;

	if (m->magic != XDP_META_MAGIC || m->saddr != f->key.saddr || m->sport != f->key.sport ||
	    m->dport != f->key.dport || m->proto != f->key.proto)
		return NULL;
	idx = m->rs_idx;
	return real_named(&idx, m->rs_addr, m->rs_port, s->id);
}

SEC("tc")
int tc_front(struct __sk_buff *skb)
{
	struct xdp_meta pick = {};
	struct tc_pkt p = {};
	struct config *c;
	struct real *rs;
	struct svc *s;
	__u64 now;
	__u32 idx;
	int r;

	tc_xdp_meta(skb, &pick);
	r = tc_parse(skb, &p);
	if (r != TC_L4) {
		if (p.owned_dst) {
			if (r == TC_NOT_L4 && p.f.key.proto == IPPROTO_ICMP)
				return tc_front_icmp(skb);
			count(r == TC_BAD ? R_DROP_TRUNCATED : R_DROP_PROTO);
			return TC_ACT_SHOT;
		}
		count(R_TC_PASS);
		return TC_ACT_OK;
	}
	s = svc_find(p.f.key.daddr, p.f.key.dport, p.f.key.proto);
	if (!s) {
		if (p.owned_dst) {
			count(R_DROP_NO_SERVICE);
			return TC_ACT_SHOT;
		}
		count(R_TC_PASS);
		return TC_ACT_OK;
	}
	c = get_cfg();
	if (!c)
		return TC_ACT_SHOT;
	now = now_ns(c);
	if (!lease_valid(s->lease_idx, now)) {
		count(R_DROP_NO_LEASE);
		return TC_ACT_SHOT;
	}
	rs = picked_real(s, &p.f, &pick);
	if (rs) {
		idx = pick.rs_idx;
		count(R_TC_XDP_PICK);
	} else {
		rs = conn_select(s, &p.f, now, &idx, c);
	}
	if (!rs) {
		count(R_DROP_NO_REAL);
		return TC_ACT_SHOT;
	}
	if (rs->method == METHOD_TUN || rs->method == METHOD_DR) {
		account(s->id, idx, p.f.len);
		return tc_forward(skb, rs, c);
	}
	if (rs->method != METHOD_NAT) {
		count(R_TC_DROP_METHOD);
		return TC_ACT_SHOT;
	}
	if (tc_rewrite(skb, &p, IP_DST_OFF, p.f.key.daddr, rs->addr,
		       L4_OFF + offsetof(struct tcphdr, dest), p.f.key.dport, rs->port)) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	account(s->id, idx, p.f.len);
	count(R_TC_NAT_IN);
	return bpf_redirect_neigh(c->inside_ifindex, NULL, 0, 0);
}

SEC("tc")
int tc_inside(struct __sk_buff *skb)
{
	struct tc_pkt p = {};
	struct rnat_key rk = {};
	struct conn_key ck = {};
	struct config *c;
	struct conn *cn;
	struct rnat *rv;
	struct svc *s;
	__u32 rs_idx = MAX_REALS; /* no realserver counters without a connection */
	__be32 vip;
	__be16 vport;
	__u64 now;
	int r;

	r = tc_parse(skb, &p);
	if (r != TC_L4) {
		if (r == TC_NOT_L4 && p.f.key.proto == IPPROTO_ICMP) {
			r = tc_inside_icmp(skb);
			if (r >= 0)
				return r;
			r = TC_NOT_L4;
		}
		if (p.owned_dst) {
			count(r == TC_BAD ? R_DROP_TRUNCATED : R_DROP_PROTO);
			return TC_ACT_SHOT;
		}
		count(R_TC_PASS);
		return TC_ACT_OK;
	}
	rk.saddr = p.f.key.saddr;
	rk.daddr = p.f.key.daddr;
	rk.sport = p.f.key.sport;
	rk.dport = p.f.key.dport;
	rk.proto = p.f.key.proto;
	c = get_cfg();
	if (!c)
		return TC_ACT_SHOT;
	rv = rnat_find(&rk, c);
	if (!rv) {
		if (p.owned_dst) {
			count(R_DROP_NO_SERVICE);
			return TC_ACT_SHOT;
		}
		count(R_TC_PASS);
		return TC_ACT_OK;
	}
	vip = rv->vip;
	vport = rv->vport;
	s = svc_find(vip, vport, p.f.key.proto);
	if (!s) {
		count(R_TC_DROP_NAT_NO_CONN);
		return TC_ACT_SHOT;
	}
	now = now_ns(c);
	if (!lease_valid(s->lease_idx, now)) {
		count(R_DROP_NO_LEASE);
		return TC_ACT_SHOT;
	}
	/* A store per tick at most: the clock moves in ticks. */
	if (rv->last_seen_ns != now)
		rv->last_seen_ns = now;
	ck.saddr = p.f.key.daddr;
	ck.daddr = vip;
	ck.sport = p.f.key.dport;
	ck.dport = vport;
	ck.proto = p.f.key.proto;
	/* The reverse entry alone is enough to translate: a connection that
	 * did not fit a full table still gets its replies. */
	cn = conn_find(&ck, c);
	if (cn) {
		rs_idx = cn->rs_idx;
		cn->last_seen_ns = now;
		if (p.f.rst && cn->state != ST_CLOSE) {
			cn->state = ST_CLOSE;
			cn->event_ns = now;
			emit(EV_STATE, &ck, cn, now, c);
		} else if (now - cn->event_ns >= s->refresh_ns) {
			/* Flows where only the realserver talks stay alive on
			 * the replicas too. */
			cn->event_ns = now;
			emit(EV_REFRESH, &ck, cn, now, c);
		}
	}
	account(s->id, rs_idx, p.f.len);
	if (tc_rewrite(skb, &p, IP_SRC_OFF, p.f.key.saddr, vip,
		       L4_OFF + offsetof(struct tcphdr, source), p.f.key.sport, vport)) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	count(R_TC_NAT_OUT);
	return bpf_redirect_neigh(c->front_ifindex, NULL, 0, 0);
}

/* Health probes of TUN realservers, by socket mark: the director's own
 * packets to a VIP, which policy routing already sends towards the
 * realserver's next hop, leave encapsulated to that realserver, as
 * forwarded traffic does (Seesaw's marked probes). The prober fills it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TUN_PROBES);
	__type(key, __u32);   /* skb mark */
	__type(value, __be32); /* realserver */
} tun_probes SEC(".maps");

SEC("tc")
int tc_front_egress(struct __sk_buff *skb)
{
	__u32 need = ETH_HLEN + sizeof(struct iphdr), mark = skb->mark, len;
	struct iphdr *in, outer = {};
	void *data, *data_end;
	struct config *c;
	__be32 *rs;

	/* Everything but probes leaves untouched, at the cost of one test. */
	if (!mark)
		return TC_ACT_OK;
	rs = bpf_map_lookup_elem(&tun_probes, &mark);
	if (!rs || skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if ((void *)(long)skb->data + need > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, need);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	in = data + ETH_HLEN;
	if ((void *)(in + 1) > data_end || in->version != 4 || in->protocol == IPPROTO_IPIP)
		return TC_ACT_OK;
	c = get_cfg();
	/* A probe must never leave unencapsulated: it would reach the VIP on
	 * whatever host the next hop is, proving nothing. */
	if (!c || !c->front_addr) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	len = bpf_ntohs(in->tot_len) + sizeof(outer);
	outer.version = 4;
	outer.ihl = 5;
	outer.tos = in->tos;
	outer.tot_len = bpf_htons(len > 0xffff ? 0xffff : len); /* as in tc_forward */
	outer.frag_off = bpf_htons(IP_DF); /* as in xdp_tun */
	outer.ttl = 64;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = c->front_addr;
	outer.daddr = *rs;
	outer.check = ip_csum(&outer);
	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0)) {
		count(R_DROP_ERROR);
		return TC_ACT_SHOT;
	}
	count(R_TC_TX_TUN_PROBE);
	return TC_ACT_OK;
}

/* Run once per load through BPF_PROG_TEST_RUN: pairs jiffies with the
 * coarse CLOCK_MONOTONIC so Go can derive clock_off. */
SEC("xdp")
int clock_probe(struct xdp_md *ctx)
{
	struct clock_sample *cs;
	__u32 k = 0;

	cs = bpf_map_lookup_elem(&clock_samples, &k);
	if (!cs)
		return XDP_ABORTED;
	cs->jiffies = bpf_jiffies64();
	cs->coarse_ns = bpf_ktime_get_coarse_ns();
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
