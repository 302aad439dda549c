#!/bin/sh
# Writes nginx's configuration for $PORT and $VERSION, then runs it in the foreground.
cat >/etc/nginx/bench.conf <<CONF
worker_processes 1;
error_log stderr;
pid /run/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server {
    listen ${PORT:-8000};
    location /health { return 200 "ok\n"; }
    location / { return 200 "${VERSION}\n"; }
  }
}
CONF
exec nginx -c /etc/nginx/bench.conf -g 'daemon off;'
