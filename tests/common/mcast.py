"""Multicast helpers for the discovery tests (standard library only).

  mcast.py listen GROUP PORT IFADDR SECS        prints each datagram as "FROM PAYLOAD" until SECS pass
  mcast.py send GROUP PORT IFADDR TEXT [N]      sends TEXT (N times, back to back, numbered)
  mcast.py respond IFADDR SERVICE INSTANCE SECS an mDNS responder: answers PTR questions for SERVICE
  mcast.py query IFADDR SERVICE SECS            asks for SERVICE over mDNS; prints the PTR answers
  mcast.py resolve IFADDR NAME SECS             asks for NAME's A record over mDNS; prints "FROM ADDR"

An IPv6 IFADDR (an address of the interface to use) makes mDNS go over ff02::fb (and
resolve ask for AAAA); an IPv6 GROUP is sent and heard on the interface holding IFADDR.
"""
import socket, struct, sys, time


def ifindex(addr):
    packed = socket.inet_pton(socket.AF_INET6, addr).hex()
    for line in open("/proc/net/if_inet6"):
        f = line.split()
        if f[0] == packed:
            return int(f[1], 16)
    raise SystemExit(f"no interface has {addr}")


def dest(group, port, ifaddr):
    return (group, port, 0, ifindex(ifaddr)) if ":" in group else (group, port)


def mdns_group(ifaddr):
    return "ff02::fb" if ":" in ifaddr else "224.0.0.251"


def sock(group, port, ifaddr, bind=True):
    if ":" in group:
        idx = ifindex(ifaddr)
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind:
            s.bind((group, port, 0, idx))
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                         socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", idx))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        return s
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind:
        s.bind((group, port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(group) + socket.inet_aton(ifaddr))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ifaddr))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    return s


def name(n):
    return b"".join(bytes([len(l)]) + l.encode() for l in n.split(".")) + b"\0"


def read_name(m, i):
    out, jumped, end = [], False, None
    while True:
        n = m[i]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = i + 2
            i, jumped = ((n & 0x3F) << 8) | m[i + 1], True
            continue
        if n == 0:
            return ".".join(out), (end if jumped else i + 1)
        out.append(m[i + 1:i + 1 + n].decode(errors="replace"))
        i += n + 1


def main():
    mode = sys.argv[1]
    if mode == "listen":
        group, port, ifaddr, secs = sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
        s = sock(group, port, ifaddr)
        end = time.time() + secs
        while time.time() < end:
            s.settimeout(max(0.05, end - time.time()))
            try:
                d, a = s.recvfrom(2048)
            except socket.timeout:
                break
            print(a[0], d.decode(errors="replace"), flush=True)
    elif mode == "send":
        group, port, ifaddr, text = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
        n = int(sys.argv[6]) if len(sys.argv) > 6 else 1
        s = sock(group, port, ifaddr, bind=False)
        for i in range(n):
            s.sendto((text if n == 1 else f"{text}-{i}").encode(), dest(group, port, ifaddr))
    elif mode == "respond":
        ifaddr, service, instance, secs = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
        group = mdns_group(ifaddr)
        s = sock(group, 5353, ifaddr)
        end = time.time() + secs
        while time.time() < end:
            s.settimeout(max(0.05, end - time.time()))
            try:
                q, _ = s.recvfrom(2048)
            except socket.timeout:
                break
            if len(q) < 12 or q[2] & 0x80:
                continue
            qname, _ = read_name(q, 12)
            if qname.lower() != service.lower():
                continue
            target = name(instance + "." + service)
            rr = name(service) + struct.pack(">HHIH", 12, 1, 120, len(target)) + target
            resp = struct.pack(">HHHHHH", 0, 0x8400, 0, 1, 0, 0) + rr
            s.sendto(resp, dest(group, 5353, ifaddr))
    elif mode in ("query", "resolve"):
        ifaddr, service, secs = sys.argv[2], sys.argv[3], float(sys.argv[4])
        v6 = ":" in ifaddr
        qtype = 12 if mode == "query" else (28 if v6 else 1)
        group = mdns_group(ifaddr)
        s = sock(group, 5353, ifaddr)
        q = struct.pack(">HHHHHH", 0, 0, 1, 0, 0, 0) + name(service) + struct.pack(">HH", qtype, 1)
        end = time.time() + secs
        next_ask = 0.0
        while time.time() < end:
            if time.time() >= next_ask:
                s.sendto(q, dest(group, 5353, ifaddr))
                next_ask = time.time() + 0.5
            s.settimeout(0.1)
            try:
                m, a = s.recvfrom(2048)
            except socket.timeout:
                continue
            if len(m) < 12 or not m[2] & 0x80:
                continue
            an = struct.unpack(">H", m[6:8])[0]
            i = 12
            for _ in range(struct.unpack(">H", m[4:6])[0]):
                _, i = read_name(m, i)
                i += 4
            for _ in range(an):
                owner, i = read_name(m, i)
                t, _, _, rdlen = struct.unpack(">HHIH", m[i:i + 10])
                i += 10
                if t == 12 and qtype == 12:
                    print(a[0], read_name(m, i)[0], flush=True)
                    return
                if t == qtype and owner.lower() == service.lower().rstrip("."):
                    fam = socket.AF_INET6 if v6 else socket.AF_INET
                    print(a[0], socket.inet_ntop(fam, m[i:i + rdlen]), flush=True)
                    return
                i += rdlen


main()
