<#
.SYNOPSIS
    keyfleet export helper: backs up this server's SCSM encryption key with SecureStorageBackup.exe.
.DESCRIPTION
    Sent after common.ps1 as one script. -Params: tool_path, tool_timeout; -Secret: the backup
    password. Runs "SecureStorageBackup.exe Backup <file>" in a private temporary folder
    (Administrators and SYSTEM only), types the password on the tool's stdin, stops the tool after
    tool_timeout seconds, and returns the key file (base64), its SHA-256 and size, the SCSM role
    and version, and the tool's exit code and output. The temporary folder is always removed.
#>
Assert-Administrator
$role = Get-ScsmRole
$version = Get-ScsmVersion
# reported with a failure too, so the controller learns of an upgrade even when the backup fails
$global:KeyfleetServer = @{ role = $role; version = $version }
if ($null -eq $Secret -or $Secret.Length -eq 0) { Stop-Helper 'remote' 'no backup password was given' }
$timeout = Get-ToolTimeout
$tool = Get-RequiredTool
$folder = New-PrivateFolder
try {
    $keyFile = Join-Path $folder 'SMBackupkey.bin'
    $run = Invoke-Tool $tool 'Backup' $keyFile $timeout
    if ($run.exit -ne 0) {
        Stop-Helper 'tool-failed' ('SecureStorageBackup.exe Backup exited with code {0}: {1}' -f $run.exit, $run.output)
    }
    if (-not (Test-Path -LiteralPath $keyFile -PathType Leaf)) {
        Stop-Helper 'tool-failed' "SecureStorageBackup.exe Backup exited with code 0 but wrote no key file: $($run.output)"
    }
    $bytes = [IO.File]::ReadAllBytes($keyFile)
    if ($bytes.Length -eq 0 -or $bytes.Length -gt $MaximumKeyFileBytes) {
        Stop-Helper 'tool-failed' ('SecureStorageBackup.exe Backup wrote a key file of {0} bytes (expected 1 to {1})' -f $bytes.Length, $MaximumKeyFileBytes)
    }
    $file = @{
        file   = [Convert]::ToBase64String($bytes)
        sha256 = Get-Sha256Hex $bytes
        size   = $bytes.Length
    }
    return $file + (New-ToolResult $role $version $tool $run)
}
finally {
    Remove-Item -LiteralPath $folder -Recurse -Force
}
