# Inputs kubeplat computes and passes itself (not part of the environment file).

variable "userdata" {
  type        = map(string)
  description = "The rendered user-data stub of each layer (secure, compute, and control-plane when separate). Example: {secure = \"#!/bin/sh ...\"}."

  validation {
    condition     = alltrue([for layer, text in var.userdata : length(text) < 16384 && !can(regex("PRIVATE\\s+KEY", text))])
    error_message = "Each user-data stub must be under 16 KB and hold no private key."
  }
}

variable "node_ssh_public_key" {
  type        = string
  description = "The environment's SSH public key (OpenSSH format), installed as the EC2 key pair. Example: \"ssh-ed25519 AAAA... kubeplat\"."

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp[0-9]+) ", var.node_ssh_public_key))
    error_message = "node_ssh_public_key must be an OpenSSH public key."
  }
}
