"""Deployment tools: deploy.sh (the GitLab pipeline's deploy jobs) and pin_images.py (`make pin-images`)."""
