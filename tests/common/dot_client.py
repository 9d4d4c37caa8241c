"""A DoT client that keeps one connection open across a certificate renewal.

usage: dot_client.py HOST SNI CAFILE NAME GOFILE
Prints `first <sha256 of the server cert> <answer ok>`, waits (bounded) until GOFILE exists,
asks again on the same connection (`same <ok>`), then on a new one (`new <sha256> <ok>`).
"""
import hashlib, os, socket, ssl, struct, sys, time

host, sni, cafile, name, go = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=cafile)


def query(qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return struct.pack(">H", len(q) + 5) + q + b"\0" + struct.pack(">HH", 1, 1)


def read(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError("connection closed")
        b += chunk
    return b


def ask(s, qid):
    s.sendall(query(qid))
    n = struct.unpack(">H", read(s, 2))[0]
    a = read(s, n)
    rcode = a[3] & 15
    ancount = struct.unpack(">H", a[6:8])[0]
    return "ok" if rcode == 0 and ancount > 0 and a[:2] == struct.pack(">H", qid) else f"rcode={rcode}"


def connect():
    raw = socket.create_connection((host, 853), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname=sni)
    return s, hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


s, first = connect()
print("first", first, ask(s, 1), flush=True)
end = time.time() + 60
while not os.path.exists(go) and time.time() < end:
    time.sleep(0.05)
print("same", ask(s, 2), flush=True)
s2, second = connect()
print("new", second, ask(s2, 3), flush=True)
