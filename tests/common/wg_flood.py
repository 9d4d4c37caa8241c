# Sends N WireGuard handshake initiations with a valid MAC1 (so they pass the cheap check and
# reach the rate limiter) but garbage contents, as fast as it can; prints how many cookie
# replies (message type 3) came back.
import base64, hashlib, os, socket, struct, sys, time
hub_pub = base64.b64decode(sys.argv[1])
dst = (sys.argv[2], int(sys.argv[3]))
n = int(sys.argv[4])
mac1_key = hashlib.blake2s(b"mac1----" + hub_pub).digest()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.setblocking(False)
cookies = 0
def drain():
    global cookies
    while True:
        try:
            d = s.recv(2048)
        except BlockingIOError:
            return
        if d[:1] == b"\x03":
            cookies += 1
for i in range(n):
    body = struct.pack("<I", 1) + os.urandom(112)
    mac1 = hashlib.blake2s(body, key=mac1_key, digest_size=16).digest()
    try:
        s.sendto(body + mac1 + bytes(16), dst)
    except BlockingIOError:
        time.sleep(0.001)
    if i % 256 == 0:
        drain()
end = time.time() + 2
while time.time() < end:
    drain()
    time.sleep(0.05)
print(cookies)
