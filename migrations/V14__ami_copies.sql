-- An AMI for a region other than the bake's is copied from the baked one: copy_of names the
-- region of the AMI it is copied from (NULL: baked with Packer, or a Docker image). A copy is
-- claimed only once its source's bake has ended.
ALTER TABLE release_images ADD COLUMN copy_of text;
