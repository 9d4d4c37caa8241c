import socket, struct, sys, time, os
dst, count, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
src = sys.argv[4] if len(sys.argv) > 4 else None
v6 = ':' in dst
fam = socket.AF_INET6 if v6 else socket.AF_INET
s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
if src: s.bind((src, 0))
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
ident = os.getpid() & 0xffff
ok = 0
for seq in range(count):
    typ = 128 if v6 else 8
    hdr = struct.pack('!BBHHH', typ, 0, 0, ident, seq) + b'cloudpc-probe'
    if not v6: hdr = hdr[:2] + struct.pack('!H', csum(hdr)) + hdr[4:]
    s.sendto(hdr, (dst, 0))
    end = time.time() + wait
    while time.time() < end:
        s.settimeout(max(0.01, end - time.time()))
        try: data, addr = s.recvfrom(2000)
        except socket.timeout: break
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        if icmp[0] == (129 if v6 else 0) and struct.unpack('!HH', icmp[4:8]) == (ident, seq):
            ok += 1; break
sys.exit(0 if ok else 1)
