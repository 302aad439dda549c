-- Rebakes: what a bake needs beyond the apt repository, recorded on the release when its first
-- bake starts, so a rebake needs no checkout. The package name and version are already on the
-- release (package_name, package_version).

ALTER TABLE releases
    ADD COLUMN image_command text[],    -- the image's CMD (the systemd unit's ExecStart=)
    ADD COLUMN exposed_ports integer[]; -- the ports the image declares
