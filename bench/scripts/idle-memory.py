#!/usr/bin/env python3
"""Memory per idle keep-alive connection, percore vs nginx.

Starts the server, warms it up, opens N connections that each make one request and then stay
idle, and reports (RSS with N idle connections - RSS before) / N, from /proc/PID/status of every
process of the server (nginx: master + worker). Usage:

    bench/scripts/idle-memory.py [N] [--percore BIN] [--cpus 0,1] [--no-nginx]

Needs `ulimit -n` above N + a few hundred (this machine allows 20,000)."""
import os, re, resource, socket, subprocess, sys, tempfile, time

def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total

def children(pid):
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out += [int(p) for p in f.read().split()]
    except FileNotFoundError:
        pass
    return out

def one_request(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"Hello, World!" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed")
        data += chunk

def measure(name, addr, pids, n):
    # Warm up: let pools, rings and arenas reach their steady size.
    for _ in range(3):
        socks = [socket.create_connection(addr) for _ in range(300)]
        for s in socks:
            one_request(s)
        for s in socks:
            s.close()
    time.sleep(0.5)  # let closes finish before the baseline reading (measurement, not sync)
    base = rss_kib(pids)
    socks = []
    for i in range(n):
        s = socket.create_connection(addr)
        one_request(s)
        socks.append(s)
    time.sleep(0.5)
    after = rss_kib(pids)
    per = (after - base) * 1024 / n
    print(f"{name:8s} {n} idle keep-alive connections: RSS {base} KiB -> {after} KiB, {per:.0f} bytes/connection")
    for s in socks:
        s.close()
    return per

def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5000
    args = sys.argv[1:]
    binpath = args[args.index("--percore") + 1] if "--percore" in args else "target/release/percore"
    cpus = args[args.index("--cpus") + 1] if "--cpus" in args else "0,1"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    p = subprocess.Popen([binpath, "serve", "--listen", "127.0.0.1:0", "--cpus", cpus], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://([\d.]+):(\d+)", line)
    addr = (m.group(1), int(m.group(2)))
    try:
        ours = measure("percore", addr, [p.pid], n)
    finally:
        p.terminate(); p.wait()
    if "--no-nginx" in args:
        return
    d = tempfile.mkdtemp(prefix="peer-nginx-")
    conf = open(os.path.join(os.path.dirname(__file__), "../../../shared/peers/nginx.conf")).read() \
        if os.path.exists(os.path.join(os.path.dirname(__file__), "../../../shared/peers/nginx.conf")) else None
    if conf is None:
        print("nginx config not found (../shared/peers/nginx.conf); skipped")
        return
    port = 18000 + os.getpid() % 1000
    conf = conf.replace("/tmp/peer-nginx", d).replace("8092", str(port)).replace("worker_connections 65536", "worker_connections 19000")
    open(os.path.join(d, "nginx.conf"), "w").write(conf)
    ng = subprocess.Popen(["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf")], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close(); break
        except OSError:
            time.sleep(0.05)
    try:
        theirs = measure("nginx", ("127.0.0.1", port), children(ng.pid), n)
        print(f"ratio percore/nginx: {ours / theirs:.2f}")
    finally:
        ng.terminate(); ng.wait()

main()
