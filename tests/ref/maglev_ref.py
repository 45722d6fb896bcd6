#!/usr/bin/env python3
"""Independent reference for maglevd's Maglev table (src/maglev/mod.rs) and flow hash
(src/dataplane/mod.rs), written from their docs, not from the Rust code: SipHash-1-3 with the
documented keys over the IPv4 bytes, offset/skip, Katran-style weighted credit rounds in ascending IP
order; XXH3-64 with seed "mlvflow1" over the flow key bytes, slot = (low32(h) * M) >> 32.
Prints the golden values the Rust tests pin (they never run this script).

Usage:
  maglev_ref.py SIZE IP[:WEIGHT]...                       table: perm of the first IP, first slots, FNV
  maglev_ref.py flow SIZE KEY SRC SPORT DST DPORT PROTO IP[:WEIGHT]...
                                                          backend IP for one packet (KEY: 5-tuple,
                                                          src-ip, src-ip-port; needs `pip install xxhash`)"""
import struct, sys, ipaddress

M64 = (1 << 64) - 1
def rotl(x, b): return ((x << b) | (x >> (64 - b))) & M64

def sipround(v):
    v0, v1, v2, v3 = v
    v0 = (v0 + v1) & M64; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
    v2 = (v2 + v3) & M64; v3 = rotl(v3, 16); v3 ^= v2
    v0 = (v0 + v3) & M64; v3 = rotl(v3, 21); v3 ^= v0
    v2 = (v2 + v1) & M64; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
    return [v0, v1, v2, v3]

def siphash13(k0, k1, data):
    v = [0x736f6d6570736575 ^ k0, 0x646f72616e646f6d ^ k1, 0x6c7967656e657261 ^ k0, 0x7465646279746573 ^ k1]
    n = len(data); end = n - n % 8
    for i in range(0, end, 8):
        m = struct.unpack('<Q', data[i:i + 8])[0]
        v[3] ^= m; v = sipround(v); v[0] ^= m
    b = (n & 0xff) << 56
    for i, c in enumerate(data[end:]):
        b |= c << (8 * i)
    v[3] ^= b; v = sipround(v); v[0] ^= b
    v[2] ^= 0xff
    for _ in range(3): v = sipround(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]

def key(s): return struct.unpack('<QQ', s)
K_OFFSET = key(b'maglevd-offset-1'); K_SKIP = key(b'maglevd-skip-v01')

def perm(ip, m):
    b = ipaddress.IPv4Address(ip).packed
    return siphash13(*K_OFFSET, b) % m, siphash13(*K_SKIP, b) % (m - 1) + 1

def gcd(a, b):
    while b: a, b = b, a % b
    return a

def build(backends, m):
    order = sorted(range(len(backends)), key=lambda i: ipaddress.IPv4Address(backends[i][0]))
    order = [i for i in order if backends[i][1] > 0]
    g = 0
    for i in order: g = gcd(g, backends[i][1])
    w = {i: backends[i][1] // g for i in order}
    wmax = max(w.values())
    nxt, skip = {}, {}
    for i in order: nxt[i], skip[i] = perm(backends[i][0], m)
    credit = {i: 0 for i in order}
    table = [None] * m; filled = 0
    while True:
        for i in order:
            credit[i] += w[i]
            if credit[i] < wmax: continue
            credit[i] -= wmax
            while table[nxt[i]] is not None:
                nxt[i] = (nxt[i] + skip[i]) % m
            table[nxt[i]] = i; filled += 1
            if filled == m: return table

def fnv(table, backends):
    h = 0xcbf29ce484222325
    for s in table:
        for c in ipaddress.IPv4Address(backends[s][0]).packed:
            h ^= c; h = (h * 0x100000001b3) & M64
    return h

FLOW_SEED = struct.unpack('<Q', b'mlvflow1')[0]

def flow_backend(m, key, src, sport, dst, dport, proto, bs):
    import xxhash
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    if key == '5-tuple': data = s + d + bytes([proto]) + struct.pack('>HH', sport, dport)
    elif key == 'src-ip': data = s
    elif key == 'src-ip-port': data = s + struct.pack('>H', sport)
    else: raise SystemExit('unknown key ' + key)
    h = xxhash.xxh3_64_intdigest(data, seed=FLOW_SEED)
    slot = ((h & 0xffffffff) * m) >> 32
    return bs[build(bs, m)[slot]][0]

def parse_backends(args):
    bs = []
    for a in args:
        ip, _, wt = a.partition(':'); bs.append((ip, int(wt or 1)))
    return bs

if __name__ == '__main__' and sys.argv[1] == 'flow':
    m, key, src, sport, dst, dport, proto = sys.argv[2:9]
    print(flow_backend(int(m), key, src, int(sport), dst, int(dport), int(proto), parse_backends(sys.argv[9:])))
elif __name__ == '__main__':
    m = int(sys.argv[1])
    bs = []
    for a in sys.argv[2:]:
        ip, _, wt = a.partition(':'); bs.append((ip, int(wt or 1)))
    t = build(bs, m)
    print('perm', bs[0][0], perm(bs[0][0], m))
    print('first12', t[:12])
    print('fnv 0x%016x' % fnv(t, bs))
