// SPDX-License-Identifier: GPL-2.0
/*
 * Realserver side of TUN: strip the outer IPv4 header of IP-in-IP packets
 * at TC ingress, for kernels without the ipip module. Like tunl0 it takes
 * any well-formed IP-in-IP packet; the kernel then delivers the inner one
 * only if its destination (the VIP on lo) is local.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (Linux 6.3); the build's headers are older. */
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define EINVAL 22

enum { DECAP_OK = 0, DECAP_PASS = 1, DECAP_ERROR = 2, DECAP_MAX = 3 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECAP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} decap_stats SEC(".maps");

static __always_inline void count(__u32 r)
{
	__u64 *v = bpf_map_lookup_elem(&decap_stats, &r);

	if (v)
		*v += 1;
}

SEC("tc")
int tc_decap(struct __sk_buff *skb)
{
	__u32 need = ETH_HLEN + 2 * sizeof(struct iphdr);
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip, *in;
	long err;

	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->len < need)
		goto pass;
	if ((void *)(long)skb->data + need > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, need);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	in = ip + 1;
	if ((void *)(in + 1) > data_end)
		goto pass;
	if (ip->protocol != IPPROTO_IPIP || ip->ihl != 5 ||
	    (ip->frag_off & bpf_htons(0x3fff)) || in->version != 4)
		goto pass;
	/* FIXED_GSO keeps gso_size the inner segment size (shrinking the
	 * header must not grow the segments); DECAP_L3_IPV4 lets newer
	 * kernels drop the tunnel's GSO state. Older kernels refuse the
	 * second flag with EINVAL. */
	err = bpf_skb_adjust_room(skb, -(int)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				  BPF_F_ADJ_ROOM_FIXED_GSO | ADJ_ROOM_DECAP_L3_IPV4);
	if (err == -EINVAL)
		err = bpf_skb_adjust_room(skb, -(int)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
					  BPF_F_ADJ_ROOM_FIXED_GSO);
	if (err) {
		count(DECAP_ERROR);
		return TC_ACT_SHOT;
	}
	count(DECAP_OK);
	return TC_ACT_OK;
pass:
	count(DECAP_PASS);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
