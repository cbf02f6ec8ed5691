# Where the Kubernetes API answers from outside (kubeconfig's server).
output "api_endpoint" {
  description = "https URL of the Kubernetes API (the public network load balancer)."
  value       = "https://${aws_lb.api_public.dns_name}"
}

# The public load balancer's DNS name.
output "api_lb_dns_name" {
  description = "DNS name of the API's public network load balancer."
  value       = aws_lb.api_public.dns_name
}

# The names nodes use inside the VPC.
output "internal_names" {
  description = "Private DNS names: the API for nodes, etcd's client endpoint."
  value = {
    api  = aws_route53_record.kube.fqdn
    etcd = aws_route53_record.secure.fqdn
  }
}

# The autoscaling group of each layer.
output "autoscaling_groups" {
  description = "Autoscaling group name of each layer."
  value       = { for layer, group in aws_autoscaling_group.node : layer => group.name }
}

# What each layer's role may read in the secrets bucket.
output "bucket_prefixes" {
  description = "Secrets-bucket objects each layer's role may read."
  value       = { for layer, paths in local.readable : layer => [for p in paths : "s3://${var.secrets_bucket_name}/${p}"] }
}

# The VPC.
output "vpc_id" {
  description = "Id of the environment's VPC."
  value       = aws_vpc.main.id
}

# The node roles' policies, for review and tests.
output "node_policies" {
  description = "IAM policy document of each layer's role."
  value       = { for layer, doc in data.aws_iam_policy_document.node : layer => doc.json }
}

# The image each layer boots (kept until node_os, coreos_image or the architecture changes).
output "node_images" {
  description = "AMI id and root device of each layer's nodes."
  value       = { for layer, image in data.aws_ami.node : layer => { id = image.id, name = image.name, root_device = image.root_device_name } }
}

# Pod roles (IRSA): what a role's trust policy names.
output "service_account_issuer" {
  description = "The issuer of the cluster's service-account tokens (empty when pod_identity is off)."
  value       = var.pod_identity ? local.service_account_issuer : ""
}

# The account's OpenID Connect provider for the issuer.
output "oidc_provider_arn" {
  description = "ARN of the IAM OpenID Connect provider a pod role's trust policy names as Federated principal (empty when pod_identity is off)."
  value       = var.pod_identity ? aws_iam_openid_connect_provider.pods[0].arn : ""
}

# The EBS CSI driver's role and its policies, for review and tests.
output "ebs_csi_role" {
  description = "The EBS CSI driver controller's role: ARN, trust policy and permissions (empty when off)."
  value = local.ebs_csi ? {
    arn    = aws_iam_role.ebs_csi[0].arn
    trust  = data.aws_iam_policy_document.ebs_csi_trust[0].json
    policy = data.aws_iam_policy_document.ebs_csi[0].json
  } : null
}
