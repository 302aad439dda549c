-- AMI retention deregisters old AMIs; their rows stay, saying so (status 'deregistered',
-- with the reason), so a release shows what happened to its image and cannot be deployed.
ALTER TABLE release_images DROP CONSTRAINT release_images_status_check;
ALTER TABLE release_images ADD CONSTRAINT release_images_status_check
    CHECK (status IN ('queued', 'baking', 'baked', 'failed', 'deregistered'));
