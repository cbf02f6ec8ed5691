# The environment file's variables. This file is the one source of the variable set: kubeplat
# reads it to know every name, type and default, and checks environments/*.tfvars against it.
# The seed wrote numbers as strings ("10"); Terraform converts them to number, and so does kubeplat.

variable "aws_account" {
  type        = string
  description = "AWS account id (12 digits) or account alias the environment lives in; kubeplat refuses to run against any other. Example: \"123456789012\"."

  validation {
    condition     = can(regex("^[0-9]{12}$", var.aws_account)) || (can(regex("^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", var.aws_account)) && can(regex("[a-z]", var.aws_account)))
    error_message = "aws_account must be a 12-digit account id or an account alias, e.g. \"123456789012\"."
  }
}

variable "aws_region" {
  type        = string
  description = "AWS region to build in. Example: \"eu-west-1\"."

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region must look like \"eu-west-1\"."
  }
}

variable "aws_profile" {
  type        = string
  default     = ""
  description = "Profile of the AWS credentials file to use; empty uses the standard credential chain. Example: \"platform-dev\"."
}

variable "compute_asg_grace_period" {
  type        = number
  default     = 300
  description = "Seconds the compute autoscaling group waits after an instance starts before checking its health. Example: 300."

  validation {
    condition     = var.compute_asg_grace_period >= 0 && var.compute_asg_grace_period <= 7200 && floor(var.compute_asg_grace_period) == var.compute_asg_grace_period
    error_message = "compute_asg_grace_period must be a whole number of seconds, from 0 to 7200."
  }
}

variable "compute_asg_max" {
  type        = number
  default     = 5
  description = "Most compute (kubelet) instances. Example: 5."

  validation {
    condition     = var.compute_asg_max >= 0 && var.compute_asg_max <= 5000 && floor(var.compute_asg_max) == var.compute_asg_max
    error_message = "compute_asg_max must be a whole number, from 0 to 5000."
  }
}

variable "compute_asg_min" {
  type        = number
  default     = 1
  description = "Fewest compute (kubelet) instances; the group starts at this size. Example: 1."

  validation {
    condition     = var.compute_asg_min >= 0 && var.compute_asg_min <= 5000 && floor(var.compute_asg_min) == var.compute_asg_min
    error_message = "compute_asg_min must be a whole number, from 0 to 5000."
  }
}

variable "compute_flavor" {
  type        = string
  default     = "t3.small"
  description = "EC2 instance type of the compute layer. Example: \"t3.small\"."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*[0-9][a-z0-9-]*\\.[a-z0-9]+$", var.compute_flavor))
    error_message = "compute_flavor must be an EC2 instance type such as \"t3.small\"."
  }
}

variable "coreos_image" {
  type        = string
  default     = ""
  description = "AMI id every node boots instead of the publisher's image of node_os (it must run node_os; the name is kept from the seed); empty uses node_os. Example: \"ami-0abcdef1234567890\"."

  validation {
    condition     = var.coreos_image == "" || can(regex("^ami-([0-9a-f]{8}|[0-9a-f]{17})$", var.coreos_image))
    error_message = "coreos_image must be empty or an AMI id such as \"ami-0abcdef1234567890\"."
  }
}

variable "dns_zone_name" {
  type        = string
  description = "DNS zone the cluster's names go under (kube.<environment>.<zone>). Example: \"dsp.io\"."

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.dns_zone_name))
    error_message = "dns_zone_name must be a DNS name such as \"example.com\"."
  }
}

variable "environment" {
  type        = string
  description = "Name of the environment; must match the file name (dev.tfvars holds \"dev\"). Example: \"dev\"."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.environment))
    error_message = "environment must be 1-20 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "etcd_flavor" {
  type        = string
  default     = "t3.small"
  description = "EC2 instance type of the secure layer (etcd and, when stacked, the control plane). Example: \"t3.small\"."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*[0-9][a-z0-9-]*\\.[a-z0-9]+$", var.etcd_flavor))
    error_message = "etcd_flavor must be an EC2 instance type such as \"t3.small\"."
  }
}

variable "kms_master_id" {
  type        = string
  description = "KMS key that encrypts the buckets and node configuration: key id, key ARN, alias or alias ARN. Example: \"alias/kubeplat-dev\"."

  validation {
    condition     = can(regex("^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}|alias/[a-zA-Z0-9/_-]+|arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key/[a-z0-9-]+|alias/[a-zA-Z0-9/_-]+))$", var.kms_master_id))
    error_message = "kms_master_id must be a KMS key id, key ARN, alias/NAME or alias ARN."
  }
}

variable "kubeapi_access_list" {
  type        = string
  description = "Comma-separated IPs or CIDRs allowed to reach the Kubernetes API; a bare IP means /32. Example: \"203.0.113.7,198.51.100.0/24\"."

  validation {
    condition     = alltrue([for s in split(",", var.kubeapi_access_list) : can(cidrnetmask(strcontains(trimspace(s), "/") ? trimspace(s) : "${trimspace(s)}/32"))])
    error_message = "kubeapi_access_list must be comma-separated IPv4 addresses or CIDRs, e.g. \"203.0.113.7,198.51.100.0/24\"."
  }
}

variable "platform" {
  type        = string
  default     = "kube"
  description = "Name of the platform, used in resource names next to the environment. Example: \"kube\"."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.platform))
    error_message = "platform must be 1-20 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "secrets_bucket_name" {
  type        = string
  description = "S3 bucket holding the PKI, node configuration and manifests (created when missing). Example: \"dev-example-com-secrets-eu-west-1\"."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.secrets_bucket_name))
    error_message = "secrets_bucket_name must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots or hyphens."
  }
}

variable "secure_asg_max" {
  type        = number
  default     = 3
  description = "Most secure-layer (etcd) instances; keep it odd for etcd quorum. Example: 3."

  validation {
    condition     = var.secure_asg_max >= 1 && var.secure_asg_max <= 7 && floor(var.secure_asg_max) == var.secure_asg_max
    error_message = "secure_asg_max must be a whole number, from 1 to 7."
  }
}

variable "secure_asg_min" {
  type        = number
  default     = 3
  description = "Fewest secure-layer (etcd) instances; the group starts at this size. Example: 3."

  validation {
    condition     = var.secure_asg_min >= 1 && var.secure_asg_min <= 7 && floor(var.secure_asg_min) == var.secure_asg_min
    error_message = "secure_asg_min must be a whole number, from 1 to 7."
  }
}

variable "ssh_access_list" {
  type        = string
  description = "Comma-separated IPs or CIDRs allowed to SSH to the nodes; a bare IP means /32. Example: \"203.0.113.7\"."

  validation {
    condition     = alltrue([for s in split(",", var.ssh_access_list) : can(cidrnetmask(strcontains(trimspace(s), "/") ? trimspace(s) : "${trimspace(s)}/32"))])
    error_message = "ssh_access_list must be comma-separated IPv4 addresses or CIDRs, e.g. \"203.0.113.7,198.51.100.0/24\"."
  }
}

variable "terraform_bucket_name" {
  type        = string
  description = "S3 bucket holding Terraform's remote state (created when missing). Example: \"dev-example-terraform-eu-west-1\"."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.terraform_bucket_name))
    error_message = "terraform_bucket_name must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots or hyphens."
  }
}

# Extensions of the seed's set; each has a safe default.

variable "sandbox" {
  type        = bool
  default     = false
  description = "Run against kubeplat's local AWS emulator instead of AWS. Example: true."
}

variable "kubernetes_version" {
  type        = string
  default     = "1.33.5"
  description = "Kubernetes version of the control plane and kubelets, one kubeplat pins (1.33.5, 1.34.2); upgrade one minor version at a time (kubeplat upgrade-check rehearses it). Example: \"1.33.5\"."

  validation {
    condition     = can(regex("^1\\.[0-9]+\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version must look like \"1.33.5\"."
  }
}

variable "etcd_version" {
  type        = string
  default     = "3.5.21"
  description = "etcd version of the secure layer (v3 API). Example: \"3.5.21\"."

  validation {
    condition     = can(regex("^3\\.[0-9]+\\.[0-9]+$", var.etcd_version))
    error_message = "etcd_version must be an etcd v3 release such as \"3.5.21\"."
  }
}

variable "topology" {
  type        = string
  default     = "stacked"
  description = "Where the control plane runs: \"stacked\" on the etcd instances, or \"separate\" in its own autoscaling group. Example: \"stacked\"."

  validation {
    condition     = contains(["stacked", "separate"], var.topology)
    error_message = "topology must be \"stacked\" or \"separate\"."
  }
}

variable "customer" {
  type        = string
  default     = ""
  description = "Customer the cluster belongs to, tagged on every resource; empty for none. Example: \"first-customer\"."

  validation {
    condition     = can(regex("^([a-z0-9][a-z0-9-]{0,62})?$", var.customer))
    error_message = "customer must be empty or lowercase letters, digits and hyphens."
  }
}

variable "key_algorithm" {
  type        = string
  default     = "ecdsa-p256"
  description = "Key algorithm of the cluster's certificates: \"ecdsa-p256\" (fast; Kubernetes and etcd accept it) or \"rsa-2048\". Example: \"ecdsa-p256\"."

  validation {
    condition     = contains(["ecdsa-p256", "rsa-2048"], var.key_algorithm)
    error_message = "key_algorithm must be \"ecdsa-p256\" or \"rsa-2048\"."
  }
}

variable "node_os" {
  type        = string
  default     = "debian-12"
  description = "Operating system of every node: \"debian-12\", \"ubuntu-24.04\" or \"al2023\". With coreos_image empty, nodes boot the publisher's latest image of it (its public SSM parameter), resolved when a group is created and kept until node_os changes. Example: \"debian-12\"."

  validation {
    condition     = contains(["debian-12", "ubuntu-24.04", "al2023"], var.node_os)
    error_message = "node_os must be \"debian-12\", \"ubuntu-24.04\" or \"al2023\"."
  }
}

variable "artifact_mirror" {
  type        = string
  default     = ""
  description = "Where nodes download the pinned binaries instead of upstream: an https://, http:// or s3:// URL laid out as <mirror>/<upstream host>/<upstream path> (e.g. <mirror>/dl.k8s.io/release/v1.33.5/bin/linux/amd64/kubelet); every file is checked against the same sha256 pins. Empty downloads from upstream. Example: \"s3://my-artifacts/kubeplat\"."

  validation {
    condition     = var.artifact_mirror == "" || can(regex("^(https?://[^/\\s]+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/[^\\s]*)?$", var.artifact_mirror))
    error_message = "artifact_mirror must be empty or an https://, http:// or s3://bucket/prefix URL."
  }
}

variable "ssh_public_key" {
  type        = string
  default     = ""
  description = "Path (relative to the environment file) of an existing SSH public key to install on the nodes; empty generates an ed25519 key pair for the environment. Example: \"~/.ssh/id_rsa.pub\"."
}

variable "etcd_snapshot_minutes" {
  type        = number
  default     = 30
  description = "Minutes between etcd snapshots: the secure layer's leader saves one, KMS-encrypted, to <environment>/etcd-backups/ in the secrets bucket. Example: 30."

  validation {
    condition     = var.etcd_snapshot_minutes >= 5 && var.etcd_snapshot_minutes <= 1440 && floor(var.etcd_snapshot_minutes) == var.etcd_snapshot_minutes
    error_message = "etcd_snapshot_minutes must be a whole number from 5 to 1440."
  }
}

variable "etcd_snapshot_keep" {
  type        = number
  default     = 48
  description = "How many etcd snapshots to keep (the newest; one is always kept); older ones beyond etcd_snapshot_max_age_days go too. Example: 48."

  validation {
    condition     = var.etcd_snapshot_keep >= 1 && var.etcd_snapshot_keep <= 10000 && floor(var.etcd_snapshot_keep) == var.etcd_snapshot_keep
    error_message = "etcd_snapshot_keep must be a whole number, from 1 to 10000."
  }
}

variable "etcd_snapshot_max_age_days" {
  type        = number
  default     = 7
  description = "Days after which an etcd snapshot is deleted, even within etcd_snapshot_keep (the newest is always kept). Example: 7."

  validation {
    condition     = var.etcd_snapshot_max_age_days >= 1 && var.etcd_snapshot_max_age_days <= 3650 && floor(var.etcd_snapshot_max_age_days) == var.etcd_snapshot_max_age_days
    error_message = "etcd_snapshot_max_age_days must be a whole number of days, from 1 to 3650."
  }
}

variable "cert_renew_days" {
  type        = number
  default     = 90
  description = "kubeplat up and kubeplat certs renew reissue every leaf certificate that expires within this many days (leaves last 365 days). Example: 90."

  validation {
    condition     = var.cert_renew_days >= 7 && var.cert_renew_days <= 180 && floor(var.cert_renew_days) == var.cert_renew_days
    error_message = "cert_renew_days must be a whole number of days from 7 to 180."
  }
}

variable "secrets_encryption" {
  type        = bool
  default     = true
  description = "The API servers encrypt Secrets in etcd (secretbox, a key in the secrets bucket's locked prefix; rotate with kubeplat certs --rotate encryption). false stores new Secrets unencrypted; those encrypted before still read. Example: true."
}

variable "audit_log" {
  type        = bool
  default     = true
  description = "The API servers write an audit log (/var/log/kubernetes/audit/audit.log on control-plane nodes; Secrets and tokens at metadata level only). Example: true."
}

variable "audit_log_max_age_days" {
  type        = number
  default     = 30
  description = "Days an API server keeps rotated audit log files. Example: 30."

  validation {
    condition     = var.audit_log_max_age_days >= 1 && var.audit_log_max_age_days <= 3650 && floor(var.audit_log_max_age_days) == var.audit_log_max_age_days
    error_message = "audit_log_max_age_days must be a whole number of days, from 1 to 3650."
  }
}

variable "compute_roll_min_healthy" {
  type        = number
  default     = 90
  description = "Percentage of the compute layer that stays in service while a roll replaces it (the instance refresh's minimum healthy percentage: 90 replaces a tenth at a time; 0 all at once). Example: 90."

  validation {
    condition     = var.compute_roll_min_healthy >= 0 && var.compute_roll_min_healthy <= 100 && floor(var.compute_roll_min_healthy) == var.compute_roll_min_healthy
    error_message = "compute_roll_min_healthy must be a whole percentage, from 0 to 100."
  }
}

variable "compute_roll_max_healthy" {
  type        = number
  default     = 100
  description = "Percentage of the compute layer a roll may run at once, new instances launched before old ones go (the instance refresh's maximum healthy percentage: 100 launches none first; 110 launches a tenth first; at most compute_roll_min_healthy + 100). Example: 110."

  validation {
    condition     = var.compute_roll_max_healthy >= 100 && var.compute_roll_max_healthy <= 200 && floor(var.compute_roll_max_healthy) == var.compute_roll_max_healthy
    error_message = "compute_roll_max_healthy must be a whole percentage, from 100 to 200."
  }

  validation {
    condition     = var.compute_roll_max_healthy - var.compute_roll_min_healthy <= 100
    error_message = "compute_roll_max_healthy may be at most 100 above compute_roll_min_healthy (AWS refuses a wider instance refresh)."
  }
}

variable "node_drain_timeout" {
  type        = number
  default     = 600
  description = "Seconds a leaving node is drained (cordoned, its pods evicted as their PodDisruptionBudgets allow) before its instance terminates anyway. Example: 600."

  validation {
    condition     = var.node_drain_timeout >= 0 && var.node_drain_timeout <= 3600 && floor(var.node_drain_timeout) == var.node_drain_timeout
    error_message = "node_drain_timeout must be a whole number of seconds, from 0 to 3600."
  }
}

variable "audit_log_max_backups" {
  type        = number
  default     = 10
  description = "How many rotated audit log files an API server keeps. Example: 10."

  validation {
    condition     = var.audit_log_max_backups >= 1 && var.audit_log_max_backups <= 1000 && floor(var.audit_log_max_backups) == var.audit_log_max_backups
    error_message = "audit_log_max_backups must be a whole number, from 1 to 1000."
  }
}

variable "audit_log_max_size_mb" {
  type        = number
  default     = 100
  description = "Size in megabytes at which an API server rotates its audit log. Example: 100."

  validation {
    condition     = var.audit_log_max_size_mb >= 1 && var.audit_log_max_size_mb <= 10000 && floor(var.audit_log_max_size_mb) == var.audit_log_max_size_mb
    error_message = "audit_log_max_size_mb must be a whole number of megabytes, from 1 to 10000."
  }
}

variable "pod_identity" {
  type        = bool
  default     = true
  description = "Pods may assume IAM roles of their own (IRSA): the API servers issue service-account tokens AWS STS accepts, kubeplat publishes the issuer's discovery document and keys in oidc_bucket_name (only those two objects public), and Terraform registers it as an IAM OpenID Connect provider. Example: true."
}

variable "oidc_bucket_name" {
  type        = string
  default     = ""
  description = "The bucket the service-account issuer's documents are published in (public: those documents only; no dots, for TLS). Empty means <secrets_bucket_name>-oidc. Example: \"acme-kubeplat-oidc\"."
}

variable "cloud_controller_manager" {
  type        = bool
  default     = true
  description = "Run the AWS cloud controller manager on the control plane: nodes get their provider ids, zones and addresses from EC2, Services of type LoadBalancer get a network load balancer, and a terminated instance's Node object goes. false registers kubelets without a cloud provider. Example: true."
}

variable "metrics_server" {
  type        = bool
  default     = true
  description = "Run metrics-server: the resource metrics API that kubectl top and the HorizontalPodAutoscaler read. Example: true."
}

variable "ebs_csi_driver" {
  type        = bool
  default     = true
  description = "Run the Amazon EBS CSI driver with a default gp3 StorageClass (volumes encrypted with kms_master_id, made in the zone of the pod that uses them); its controller assumes a role of its own through pod_identity, which it needs. Example: true."
}
