# The example environment: runs entirely in kubeplat's sandbox (a local AWS emulator),
# so it needs no AWS account. Try: kubeplat validate -e example
sandbox                  = true

aws_account              = "123456789012"
aws_region               = "eu-west-1"
aws_profile              = ""
compute_asg_grace_period = 60
compute_asg_max          = 3
compute_asg_min          = 2
compute_flavor           = "t3.small"
dns_zone_name            = "example.internal"
environment              = "example"
etcd_flavor              = "t3.small"
kms_master_id            = "alias/kubeplat-example"
kubeapi_access_list      = "127.0.0.1,10.0.0.0/8"
platform                 = "kube"
secrets_bucket_name      = "kubeplat-example-secrets"
secure_asg_max           = 3
secure_asg_min           = 3
ssh_access_list          = "127.0.0.1"
terraform_bucket_name    = "kubeplat-example-terraform"
topology                 = "stacked"
node_os                  = "debian-12"
