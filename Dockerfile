# The build container of the seed: kubeplat, Terraform and kubectl, pinned and checked.
#   docker build -t kubeplat .
#   docker run --rm -it -v "$PWD:/work" -v "$HOME/.aws:/home/kubeplat/.aws:ro" kubeplat up -e dev
# /work is the platform repository (environments/, and .kubeplat/ for state kept between runs).
FROM python:3.11-slim

ARG TERRAFORM_VERSION=1.11.4
# From HashiCorp's terraform_1.11.4_SHA256SUMS.
ARG TERRAFORM_SHA256=1ce994251c00281d6845f0f268637ba50c0005657eb3cf096b92f753b42ef4dc
ARG KUBECTL_VERSION=1.33.5
# From dl.k8s.io's kubectl.sha256 (also pinned in kubeplat/artifacts.py).
ARG KUBECTL_SHA256=6a12d6c39e4a611a3687ee24d8c733961bb4bae1ae975f5204400c0a6930c6fc

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl openssh-client unzip \
 && rm -rf /var/lib/apt/lists/*

RUN curl -fsSLo /tmp/terraform.zip \
      "https://releases.hashicorp.com/terraform/${TERRAFORM_VERSION}/terraform_${TERRAFORM_VERSION}_linux_amd64.zip" \
 && echo "${TERRAFORM_SHA256}  /tmp/terraform.zip" | sha256sum -c - \
 && unzip -q /tmp/terraform.zip terraform -d /usr/local/bin \
 && rm /tmp/terraform.zip \
 && curl -fsSLo /usr/local/bin/kubectl "https://dl.k8s.io/release/v${KUBECTL_VERSION}/bin/linux/amd64/kubectl" \
 && echo "${KUBECTL_SHA256}  /usr/local/bin/kubectl" | sha256sum -c - \
 && chmod 0755 /usr/local/bin/kubectl

COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

RUN useradd --create-home --uid 1000 kubeplat
USER kubeplat
WORKDIR /work
VOLUME ["/work", "/home/kubeplat/.aws"]
ENTRYPOINT ["kubeplat"]
CMD ["--help"]
