"""A static HTTP server on 127.0.0.1 with Range support, for tests of remote reads.

Run as its own process (`python -m tests.range_server DIR`; it prints its port): GDAL's
reads hold the GIL, so a server thread inside the test process would never answer them.
Each request is appended to DIR/requests.log, so tests can see what GDAL fetched.
"""

import functools
import http.server
import io
import os
import re
import sys


class RangeHandler(http.server.SimpleHTTPRequestHandler):
  """GET/HEAD of files with single byte ranges (`Range: bytes=a-b`), as COG readers ask."""

  def log_message(self, *args):
    with open(os.path.join(self.directory, "requests.log"), "a") as f:
      f.write(f"{self.command} {self.path} {self.headers.get('Range', '')}\n")

  def send_head(self):
    path = self.translate_path(self.path)
    if not os.path.isfile(path):
      self.send_error(404)
      return None
    with open(path, "rb") as f:
      data = f.read()
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
    if m and int(m[1]) < len(data):
      a, b = int(m[1]), min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
      data = data[a:b + 1]
    else:
      self.send_response(200)
    self.send_header("Content-Type", "application/octet-stream")
    self.send_header("Accept-Ranges", "bytes")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    return io.BytesIO(data)


def main(directory: str) -> None:
  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(RangeHandler, directory=directory))
  print(server.server_address[1], flush=True)
  server.serve_forever()


if __name__ == "__main__":
  main(sys.argv[1])
