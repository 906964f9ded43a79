"""An Envoy child process on a JSON config: start it, wait until its listener is ready, read its
stats, stop it. Shared by the Envoy tests and `bench/envoy/bench_filter.py`."""

import http.client
import json
import subprocess
import time


class EnvoyFailed(RuntimeError):
    """Envoy exited or never became ready; the message ends with its log."""


def admin_get(hostport, path):
    """(status, body) of a GET on Envoy's admin port; (0, b"") when it does not answer."""
    c = http.client.HTTPConnection(hostport, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""
    finally:
        c.close()


class EnvoyProcess:
    """`envoy` on `config` (a dict, written to `home/envoy.json`), one worker thread, admin and
    listener on ephemeral ports. Ready when constructed: `addr` ("127.0.0.1:PORT") and `url`
    reach its first listener, `admin` ("127.0.0.1:PORT") its admin interface."""

    def __init__(self, envoy_bin, home, config, log_args=("-l", "warn"), timeout_s=60):
        home.mkdir(parents=True, exist_ok=True)
        # JSON, not YAML: PyYAML leaves `y` unquoted and Envoy reads it as a boolean.
        (home / "envoy.json").write_text(json.dumps(config))
        admin_file = home / "admin-address"
        self.log = home / "envoy.log"
        self.proc = subprocess.Popen(
            [envoy_bin, "-c", str(home / "envoy.json"), "--concurrency", "1", "--disable-hot-restart",
             "--admin-address-path", str(admin_file), *log_args, "--log-path", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout_s
        try:
            while not (admin_file.exists() and admin_file.read_text().strip()):
                self._check(deadline, "envoy did not start")
            self.admin = admin_file.read_text().strip()
            while True:
                st, body = admin_get(self.admin, "/listeners?format=json")
                statuses = json.loads(body).get("listener_statuses", []) if st == 200 else []
                port = statuses[0]["local_address"]["socket_address"].get("port_value") if statuses else None
                if port and admin_get(self.admin, "/ready")[0] == 200:
                    self.addr, self.url = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
                    return
                self._check(deadline, "envoy never became ready")
        except BaseException:
            self.close()
            raise

    def _check(self, deadline, what):
        if self.proc.poll() is not None or time.time() > deadline:
            log = self.log.read_text()[-3000:] if self.log.exists() else "(no log)"
            raise EnvoyFailed(f"{what} (exit status {self.proc.poll()}):\n{log}")
        time.sleep(0.05)

    def stat(self, name):
        """The value of one stat, or None."""
        st, body = admin_get(self.admin, f"/stats?format=json&filter=^{name}$")
        stats = json.loads(body)["stats"] if st == 200 else []
        return next((s.get("value") for s in stats if s.get("name") == name), None)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
